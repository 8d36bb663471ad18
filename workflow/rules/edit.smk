# COAR-Edit.
#
# Edits of the run's own model (config `edits`), from the run's attributions.h5, no second collection:
#   snakemake --cores 2 edits                    # fit -> edit_plan -> edit_apply for every edit
#   snakemake --cores 2 results/digits/edits/forget_3/report.json
# Every edit is checked against the prepared run before the first collection job (rule check_edits).
#
# The five COAR-Edit demos are runs like any other, one config each (config/edit-demos/):
#   snakemake --cores 1 edits --configfile config/edit-demos/backdoor.yaml

import json
import re
import shlex

EDITS = {edit["name"]: edit for edit in config["edits"]}
names_pattern = lambda names: "|".join(re.escape(name) for name in names) or "(?!)"  # (?!): no edit, no match
EDIT_NAMES = names_pattern(EDITS)
# A per-example edit (one edit per target example) writes no weights: ablated.json lists each example's set.
EACH_NAMES = names_pattern([name for name, edit in EDITS.items() if edit.get("per_example")])
WHOLE_NAMES = names_pattern([name for name, edit in EDITS.items() if not edit.get("per_example")])


# How the passes run (a max_batch of 'auto' leaves the command's default), and the edit's config entry as JSON.
EDIT_PASS_OPTIONS = shell_options(
    {"device": config["device"], "max-batch": config["max_batch"] if isinstance(config["max_batch"], int) else None}
)
edit_json = lambda wildcards: shlex.quote(json.dumps(EDITS[wildcards.name]))


rule check_edits:
    """Every edit of config `edits` against the prepared run: its components and k, its labels,
    groups and ids, non-empty and disjoint target and reference among the attributed and the
    validation examples (coar/edit/checks.py). The prepare job checks the edits it was run with;
    this job checks them again with the config's output function whenever they change (the
    highest priority, so on a prepared run it comes before any collection a change of masks
    adds); edit_plan takes its output. A config without edits has no such job. Local, as
    check_masks: the device is the config's unless it is cuda (then auto: the machine running
    Snakemake may have no GPU)."""
    input:
        run=rules.prepare.output,
        stamp=config_stamp("edits"),
    output:
        touch(CHECKED_EDITS),
    log:
        f"{RUN}/logs/check_edits.log",
    priority: 100
    localrule: True
    params:
        run_dir=run_dir_of_input,
        edits=shlex.quote(json.dumps(config["edits"])),
        options=shell_options(
            {"device": "auto" if config["device"] == "cuda" else config["device"], "output-fn": config["output_fn"]}
        ),
        task=task_options(),
    shell:
        "coar check-edits --run-dir {params.run_dir:q} --edits {params.edits} {params.options} {params.task}"
        " --log {log:q}"


rule edit_plan:
    """One edit's ranked components and predicted changes per k, from the run's attributions: plan.json."""
    input:
        run=rules.prepare.output,
        attributions=rules.fit.output,
        stamp=config_stamp("edits"),
        checked=rules.check_edits.output,
    output:
        f"{RUN}/edits/{{name}}/plan.json",
    log:
        f"{RUN}/logs/edit_plan-{{name}}.log",
    benchmark:
        f"{RUN}/benchmarks/edit_plan-{{name}}.tsv"
    wildcard_constraints:
        name=EDIT_NAMES,
    threads: 1
    params:
        run_dir=run_dir_of_input,
        edit=edit_json,
        options=EDIT_PASS_OPTIONS,
        provenance=provenance_options("expect"),
        task=task_options(),
    shell:
        "coar edit-plan --run-dir {params.run_dir:q} --attributions {input.attributions:q} --out {output:q}"
        " --edit {params.edit} {params.options} {params.task} {params.provenance} --threads {threads} 2>&1 | tee {log:q}"


rule edit_apply:
    """One edit chosen and checked on validation examples: edited weights, ablated.json, a plot, and
    report.json with the SHA-256 of the others (coar/edit/record.py)."""
    input:
        **SURROGATE_INPUT,
        run=rules.prepare.output,
        attributions=rules.fit.output,
        plan=f"{RUN}/edits/{{name}}/plan.json",
    output:
        weights=f"{RUN}/edits/{{name}}/weights.safetensors",
        ablated=f"{RUN}/edits/{{name}}/ablated.json",
        report=f"{RUN}/edits/{{name}}/report.json",
        plot=f"{RUN}/edits/{{name}}/metric_vs_k.png",
    log:
        f"{RUN}/logs/edit_apply-{{name}}.log",
    benchmark:
        f"{RUN}/benchmarks/edit_apply-{{name}}.tsv"
    wildcard_constraints:
        name=WHOLE_NAMES,
    threads: 1
    params:
        run_dir=run_dir_of_input,
        edit=edit_json,
        options=EDIT_PASS_OPTIONS,
        provenance=provenance_options("expect"),
        task=task_options(),
        masks_per_pass=config["masks_per_pass"],
        out_dir=lambda wildcards, output: os.path.dirname(output.report),
        surrogate=SURROGATE_OPTION,
    shell:
        "coar edit-apply --run-dir {params.run_dir:q} --attributions {input.attributions:q} --plan {input.plan:q}"
        " --out-dir {params.out_dir:q} --masks-per-pass {params.masks_per_pass} --edit {params.edit} {params.options}"
        " {params.task} {params.provenance} {params.surrogate} --threads {threads} 2>&1 | tee {log:q}"


use rule edit_apply as edit_apply_each with:
    output:
        ablated=f"{RUN}/edits/{{name}}/ablated.json",
        report=f"{RUN}/edits/{{name}}/report.json",
        plot=f"{RUN}/edits/{{name}}/metric_vs_k.png",
    wildcard_constraints:
        name=EACH_NAMES,


rule edits:
    """Every edit of config `edits`."""
    input:
        expand(f"{RUN}/edits/{{name}}/report.json", name=list(EDITS)),
