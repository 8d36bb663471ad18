# COAR-Edit: five editing tasks on the digits, each with its own model (no attribution run needed).
#
#   snakemake --cores 2 edits                    # every task of config edit.tasks
#   snakemake --cores 2 results/digits/edits/backdoor/report.json

import json
import shlex

from coar.constants import EDIT_TASKS


rule edit:
    """One task: train its model, attribute T and R, choose k on validation data, report on test data."""
    output:
        report=f"{RUN}/edits/{{task}}/report.json",
        plot=f"{RUN}/edits/{{task}}/plots/metric_vs_k.png",
    wildcard_constraints:
        task="|".join(EDIT_TASKS),
    params:
        run_dir=lambda wildcards, output: os.path.dirname(os.path.dirname(os.path.dirname(output.report))),
        task_params=lambda wildcards: shlex.quote(json.dumps(config["edit"].get(wildcards.task, {}))),
    log:
        f"{RUN}/logs/edit-{{task}}.log",
    benchmark:
        f"{RUN}/benchmarks/edit-{{task}}.tsv"
    threads: 1
    shell:
        "coar edit --run-dir {params.run_dir:q} --task {wildcards.task:q} --params {params.task_params}"
        " --threads {threads} 2>&1 | tee {log:q}"


rule edits:
    """Every COAR-Edit task of config edit.tasks."""
    input:
        expand(f"{RUN}/edits/{{task}}/report.json", task=config["edit"]["tasks"]),
