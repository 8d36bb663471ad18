import json
import math
from pathlib import Path

from coar.resources import collect_mem_mib

# Cluster resources of a collect job, derived from its shard's size (docs/scaling.md). With
# rows = the job's masks, n = examples and N = components (prepare.json), task = the size of
# weights.safetensors and examples.safetensors in MiB and cache = config loader.cache_mb:
#   mem_mb  = attempt * (1500 + 2 task + cache + 3 rows (4 n + N) / 2**20)   (coar/resources.py)
#   runtime = attempt * (10 + rows n N SECONDS / 60)   minutes
# SECONDS is a conservative cost of one ablated forward pass per example and component: 3e-5 s
# per CPU thread (GPT-2, the slowest per component of the published models, measured on one
# thread here) and 3e-8 s on a GPU (the published CIFAR-10 setup's rate, the slowest). `attempt`
# counts retries, so a job killed for time or memory asks for more; profiles may override either
# value (`set-resources`). A GPU is requested only with `device: cuda`: clusters refuse GPU
# requests where they have none.
CUDA = config["device"] == "cuda"
SECONDS = 3e-8 if CUDA else 3e-5
COLLECT_GPU = {"gpu": 1} if CUDA else {}
HELDOUT_ROWS = config["evaluation"]["heldout_masks"]
# Sizes from the prepare step's files; before they exist Snakemake shows the resources as <TBD>.
run_sizes = lambda: {
    **json.loads(Path(rules.prepare.output.info).read_text()),
    "task_mib": sum(os.path.getsize(f) for f in (rules.prepare.output.weights, rules.prepare.output.arrays)) / 2**20,
}
collect_mem_mb = lambda rows, attempt, s: math.ceil(
    attempt * collect_mem_mib(rows, s["n_examples"], s["n_components"], s["task_mib"], config["loader"]["cache_mb"])
)
shard_size = lambda wildcards: SHARD_ROWS[int(wildcards.shard)][1] - SHARD_ROWS[int(wildcards.shard)][0]
collect_runtime = lambda rows, attempt, threads, s: math.ceil(
    attempt * (10 + rows * s["n_examples"] * s["n_components"] * SECONDS / (1 if CUDA else threads) / 60)
)


rule collect:
    """Shard i of the training masks: batched ablated forward passes -> shard-i.h5. Its only
    parameter about the masks is its own row range, so a run grown to more masks at a fixed
    shard size (shard_masks) keeps it."""
    input:
        run=rules.prepare.output,
        stamp=config_stamp("data"),
    output:
        f"{RUN}/shards/shard-{{shard}}.h5",
    log:
        f"{RUN}/logs/collect-{{shard}}.log",
    benchmark:
        f"{RUN}/benchmarks/collect-{{shard}}.tsv"
    wildcard_constraints:
        shard=r"\d+",
    # Above held-out collection and the baselines: when cores are scarce, the fit's data comes first.
    priority: 1
    threads: 1
    resources:
        **COLLECT_GPU,
        mem_mb=lambda wildcards, attempt: collect_mem_mb(shard_size(wildcards), attempt, run_sizes()),
        runtime=lambda wildcards, attempt, threads: collect_runtime(
            shard_size(wildcards), attempt, threads, run_sizes()
        ),
    params:
        run_dir=run_dir_of_input,
        rows=lambda wildcards: "{}:{}".format(*SHARD_ROWS[int(wildcards.shard)]),
        alpha=config["alpha"],
        options=collect_options("train"),
    shell:
        "coar collect --run-dir {params.run_dir:q} --out {output:q} --shard {wildcards.shard:q} --rows {params.rows:q}"
        " --alpha {params.alpha:q} {params.options} --threads {threads} 2>&1 | tee {log:q}"


rule merge:
    """Check that every shard belongs to this run and the shards tile all m rows (masks: auto:
    those of the rounds it ran); merge them."""
    input:
        run=rules.prepare.output,
        shards=training_shards,
        # masks: auto: the last round, so that rounds redone (a changed masks_auto) redo the merge
        # whatever the rerun triggers, even when the shards it now takes all existed before.
        last_round=lambda wildcards: round_file(final_round(), "json") if AUTO else [],
        checked=CHECKED_MASKS,
    output:
        f"{RUN}/dataset.h5",
    log:
        f"{RUN}/logs/merge.log",
    benchmark:
        f"{RUN}/benchmarks/merge.tsv"
    params:
        run_dir=run_dir_of_input,
        masks=lambda wildcards, input: len(input.shards) * config["shard_masks"] if AUTO else config["masks"],
        provenance=provenance_options("expect"),
    shell:
        "coar merge --run-dir {params.run_dir:q} --masks {params.masks:q} --out {output:q} {params.provenance}"
        " {input.shards:q} 2>&1 | tee {log:q}"


rule collect_heldout:
    """Fresh held-out masks at one alpha and their outputs: independent draws from the training
    distribution (seeded apart), so a few may equal a training mask for small N; they are kept
    and counted at evaluate (evaluation.json, summary.md), since dropping them would bias the
    held-out set. Needs no training data: it may run beside the training shards."""
    input:
        run=rules.prepare.output,
        stamp=config_stamp("heldout"),
    output:
        f"{RUN}/heldout/alpha-{{alpha}}.h5",
    log:
        f"{RUN}/logs/collect_heldout-{{alpha}}.log",
    benchmark:
        f"{RUN}/benchmarks/collect_heldout-{{alpha}}.tsv"
    wildcard_constraints:
        alpha=r"[0-9.e-]+",
    threads: 1
    resources:
        **COLLECT_GPU,
        mem_mb=lambda wildcards, attempt: collect_mem_mb(HELDOUT_ROWS, attempt, run_sizes()),
        runtime=lambda wildcards, attempt, threads: collect_runtime(HELDOUT_ROWS, attempt, threads, run_sizes()),
    params:
        run_dir=run_dir_of_input,
        masks=config["evaluation"]["heldout_masks"],
        options=collect_options("heldout"),
        stream=lambda wildcards: ALPHAS.index(wildcards.alpha),
    shell:
        "coar collect --run-dir {params.run_dir:q} --out {output:q} --masks {params.masks:q}"
        " --alpha {wildcards.alpha:q} --stream {params.stream:q} {params.options}"
        " --threads {threads} 2>&1 | tee {log:q}"
