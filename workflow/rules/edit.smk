# COAR-Edit: five editing tasks on the digits, each with its own model (no attribution run needed).
#
#   snakemake --cores 2 edits                    # every task of config edit.tasks
#   snakemake --cores 2 results/digits/edits/backdoor/report.json
#   snakemake --cores 2 edits --configfile seeds.yaml   # seeds.yaml: `edit: {seeds: [0, 1, 2, 3, 4]}`;
#                                                       # edits/<task>/seeds.json: mean and spread

import json
import shlex

from coar.constants import EDIT_TASKS


EDIT_SEEDS = config["edit"].get("seeds")


# report.json and its plot for one seed; seeds.json and seeds.md when config edit.seeds is set.
EDIT_OUTPUTS = (
    {"report": f"{RUN}/edits/{{task}}/report.json", "plot": f"{RUN}/edits/{{task}}/plots/metric_vs_k.png"}
    if EDIT_SEEDS is None
    else {"report": f"{RUN}/edits/{{task}}/seeds.json", "table": f"{RUN}/edits/{{task}}/seeds.md"}
)


rule edit:
    """One task: train its model, attribute T and R, choose k on validation data, report on test data (per seed)."""
    output:
        **EDIT_OUTPUTS,
    wildcard_constraints:
        task="|".join(EDIT_TASKS),
    params:
        run_dir=lambda wildcards, output: os.path.dirname(os.path.dirname(os.path.dirname(output.report))),
        task_params=lambda wildcards: shlex.quote(json.dumps(config["edit"].get(wildcards.task, {}))),
        seeds="" if EDIT_SEEDS is None else f"--seeds {','.join(str(s) for s in EDIT_SEEDS)}",
    log:
        f"{RUN}/logs/edit-{{task}}.log",
    benchmark:
        f"{RUN}/benchmarks/edit-{{task}}.tsv"
    threads: 1
    shell:
        "coar edit --run-dir {params.run_dir:q} --task {wildcards.task:q} --params {params.task_params} {params.seeds}"
        " --threads {threads} 2>&1 | tee {log:q}"


rule edits:
    """Every COAR-Edit task of config edit.tasks."""
    input:
        expand(f"{RUN}/edits/{{task}}/{'report' if EDIT_SEEDS is None else 'seeds'}.json", task=config["edit"]["tasks"]),
