import json
import shlex


rule prepare:
    """Build the task (the default trains its CNN), discover its components, check on two examples
    that each can be ablated exactly (refusing or dropping those that cannot), save both; then
    check the config's edits against what it saved (coar check-edits, on the CPU, with the task's
    output function), so no collection starts on a run whose edits cannot be made. The edits are
    read from the edits stamp, not given: a changed edit never re-prepares (check_edits checks it)."""
    input:
        stamp=config_stamp("prepare"),
    output:
        weights=f"{RUN}/weights.safetensors",
        arrays=f"{RUN}/examples.safetensors",
        ids=f"{RUN}/example_ids.json",
        groups=f"{RUN}/groups.json",
        components=f"{RUN}/components.json",
        info=f"{RUN}/prepare.json",
    log:
        f"{RUN}/logs/prepare.log",
    benchmark:
        f"{RUN}/benchmarks/prepare.tsv"
    params:
        run_dir=lambda wildcards, output: os.path.dirname(output.info),
        spec=shlex.quote(config["task"]["spec"]),
        task_params=shlex.quote(json.dumps(config["task"]["params"])),
        # Lists travel as JSON, never joined: a glob pattern may contain a comma.
        kinds=shlex.quote(
            config["components"]["kinds"]
            if isinstance(config["components"]["kinds"], str)
            else json.dumps(config["components"]["kinds"])
        ),
        include=shlex.quote(json.dumps(config["components"]["include"])),
        exclude=shlex.quote(json.dumps(config["components"]["exclude"])),
        loader=loader_options(),
        unreachable=config["components"]["unreachable"],
        preset=shell_options({"preset": config["components"].get("preset")}),
        dry_pass=shell_options({"masks-per-pass": config["masks_per_pass"], "max-batch": config["max_batch"]}),
        stamps=lambda wildcards, input: os.path.dirname(input.stamp),  # the config stamps folder
    shell:
        "coar prepare --run-dir {params.run_dir:q} --task {params.spec} --task-params {params.task_params}"
        " --kinds {params.kinds} --include {params.include} --exclude {params.exclude} {params.loader}"
        " --unreachable {params.unreachable:q} {params.preset} {params.dry_pass}"
        " 2>&1 | tee {log:q};"
        " coar check-edits --run-dir {params.run_dir:q} --edits-stamps {params.stamps:q} --task {params.spec}"
        " --task-params {params.task_params} --device cpu 2>&1 | tee -a {log:q}"


rule check_masks:
    """What the masks need, checked as soon as prepare has found the components, before the
    collection jobs (the highest priority; merge takes its output):
    OLS needs more masks than components, the surrogate more than components + 1, and the memory
    and disk of the run at its real sizes must fit this machine (coar.resources). Not a parameter
    of prepare, so changing masks never re-prepares the model (nor does a refusal here: the fixed
    config goes on from the prepared run); once prepare.json exists the Snakefile also checks the
    mask counts at start-up."""
    input:
        info=rules.prepare.output.info,
    output:
        touch(CHECKED_MASKS),
    log:
        f"{RUN}/logs/check_masks.log",
    priority: 100
    localrule: True
    params:
        masks=mask_budget(config),
        method=config["solver"]["method"],
    run:
        Path(log[0]).write_text(check_run_masks(os.path.dirname(input.info), params.masks, params.method))
