from coar.solver import closed_form_bytes
from coar.solver.memory import RESERVE_MARGIN

# Cluster resources of the fit (docs/scaling.md), with N components, n examples (prepare.json),
# m masks and a block of b = min(n, solver.example_block or FIT_BLOCK) examples:
#   mem_mb  = attempt * (1500 + (closed_form_bytes(N, b, method) + RESERVE_MARGIN) / 2**20)
#   runtime = attempt * (10 + (m N^2 + m N n + N^3 / 3 + 2 N^2 n) / FIT_RATE / 60)   minutes
# closed_form_bytes is the solver's own estimate (the Gram matrix, factored in place, and one
# block of examples), independent of n; 1500 MB is Python and its libraries (the process's
# resident memory, which `auto` measures and keeps out of the budget with RESERVE_MARGIN).
# FIT_RATE is a conservative float64 multiply-add rate of one CPU thread (3.8e10 measured, benchmarks/bench_solver.py).
FIT_BLOCK = 4096
FIT_RATE = 2e10
fit_mem_mb = lambda attempt, s: math.ceil(
    attempt
    * (
        1500
        + closed_form_bytes(
            s["n_components"],
            min(s["n_examples"], config["solver"]["example_block"] or FIT_BLOCK),
            config["solver"]["method"],
        )
        / 2**20
        + RESERVE_MARGIN / 2**20
    )
)
fit_runtime = lambda attempt, s: math.ceil(
    attempt
    * (
        10
        + (
            mask_budget(config) * s["n_components"] * (s["n_components"] + s["n_examples"])
            + s["n_components"] ** 3 / 3
            + 2 * s["n_components"] ** 2 * s["n_examples"]
        )
        / FIT_RATE
        / 60
    )
)


rule fit:
    """One linear model per example on the merged dataset: attributions.h5. A masks: auto run
    solves its last round's statistics instead (the same numbers, without reading the masks again)."""
    input:
        run=rules.prepare.output,
        stamp=config_stamp("fit"),
        data=lambda wildcards: round_file(final_round(), "h5") if AUTO else rules.merge.output[0],
    output:
        f"{RUN}/attributions.h5",
    log:
        f"{RUN}/logs/fit.log",
    benchmark:
        f"{RUN}/benchmarks/fit.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: fit_mem_mb(attempt, run_sizes()),
        runtime=lambda wildcards, attempt: fit_runtime(attempt, run_sizes()),
    params:
        run_dir=run_dir_of_input,
        source="--state" if AUTO else "--data",
        solver=config["solver"],
        provenance=provenance_options("expect"),
        example_block=shell_options({"example-block": config["solver"]["example_block"]}),
    shell:
        "coar fit --run-dir {params.run_dir:q} {params.source} {input.data:q} --out {output:q} --method {params.solver[method]:q}"
        " --backend {params.solver[backend]:q} --chunk-rows {params.solver[chunk_rows]:q}"
        " --memory-budget {params.solver[memory_budget]:q} {params.example_block} {params.provenance}"
        " 2>&1 | tee {log:q}"
