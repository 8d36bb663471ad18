# COAR-Edit.
#
# Edits of the run's own model (config `edits`), from the run's attributions.h5, no second collection:
#   snakemake --cores 2 edits                    # fit -> edit_plan -> edit_apply for every edit
#   snakemake --cores 2 results/digits/edits/forget_3/report.json
#
# The five demos on the digits, each with its own model (no attribution run needed):
#   snakemake --cores 2 edit_demos               # every task of config edit.tasks
#   snakemake --cores 2 edit_demos --configfile seeds.yaml   # seeds.yaml: `edit: {seeds: [0, 1, 2, 3, 4]}`;
#                                                            # edits/<task>/seeds.json: mean and spread

import json
import re
import shlex

from coar.constants import EDIT_TASKS


EDITS = {edit["name"]: edit for edit in config["edits"]}
EDIT_NAMES = "|".join(re.escape(name) for name in EDITS) or "(?!)"  # (?!): no edit, no match


# How the passes run (a max_batch of 'auto' leaves the command's default), and the edit's config entry as JSON.
EDIT_PASS_OPTIONS = shell_options({"device": config["device"],
                                   "max-batch": config["max_batch"] if isinstance(config["max_batch"], int) else None})
edit_json = lambda wildcards: shlex.quote(json.dumps(EDITS[wildcards.name]))


rule edit_plan:
    """One edit's ranked components and predicted changes per k, from the run's attributions: plan.json."""
    input:
        run=rules.prepare.output,
        attributions=rules.fit.output,
        stamp=config_stamp("edits"),
    output:
        f"{RUN}/edits/{{name}}/plan.json",
    wildcard_constraints:
        name=EDIT_NAMES,
    params:
        run_dir=run_dir_of_input,
        edit=edit_json,
        options=EDIT_PASS_OPTIONS,
        provenance=provenance_options("expect"),
        task=task_options(),
    log:
        f"{RUN}/logs/edit_plan-{{name}}.log",
    benchmark:
        f"{RUN}/benchmarks/edit_plan-{{name}}.tsv"
    threads: 1
    shell:
        "coar edit-plan --run-dir {params.run_dir:q} --attributions {input.attributions:q} --out {output:q}"
        " --edit {params.edit} {params.options} {params.task} {params.provenance} --threads {threads} 2>&1 | tee {log:q}"


rule edit_apply:
    """One edit chosen and checked on validation examples: edited weights, ablated.json, report.json, plot."""
    input:
        run=rules.prepare.output,
        attributions=rules.fit.output,
        plan=f"{RUN}/edits/{{name}}/plan.json",
    output:
        weights=f"{RUN}/edits/{{name}}/weights.safetensors",
        ablated=f"{RUN}/edits/{{name}}/ablated.json",
        report=f"{RUN}/edits/{{name}}/report.json",
        plot=f"{RUN}/edits/{{name}}/metric_vs_k.png",
    wildcard_constraints:
        name=EDIT_NAMES,
    params:
        run_dir=run_dir_of_input,
        edit=edit_json,
        options=EDIT_PASS_OPTIONS,
        provenance=provenance_options("expect"),
        task=task_options(),
        masks_per_pass=config["masks_per_pass"],
        out_dir=lambda wildcards, output: os.path.dirname(output.report),
    log:
        f"{RUN}/logs/edit_apply-{{name}}.log",
    benchmark:
        f"{RUN}/benchmarks/edit_apply-{{name}}.tsv"
    threads: 1
    shell:
        "coar edit-apply --run-dir {params.run_dir:q} --attributions {input.attributions:q} --plan {input.plan:q}"
        " --out-dir {params.out_dir:q} --masks-per-pass {params.masks_per_pass} --edit {params.edit} {params.options}"
        " {params.task} {params.provenance} --threads {threads} 2>&1 | tee {log:q}"


rule edits:
    """Every edit of config `edits`."""
    input:
        expand(f"{RUN}/edits/{{name}}/report.json", name=list(EDITS)),


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


rule edit_demos:
    """Every COAR-Edit demo of config edit.tasks."""
    input:
        expand(f"{RUN}/edits/{{task}}/{'report' if EDIT_SEEDS is None else 'seeds'}.json", task=config["edit"]["tasks"]),
