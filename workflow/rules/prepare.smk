import json
import shlex


rule prepare:
    """Build the task (the default trains its CNN), discover its components, check on two examples
    that each can be ablated exactly (refusing or dropping those that cannot), save both."""
    output:
        task=f"{RUN}/task.pt",
        components=f"{RUN}/components.json",
        info=f"{RUN}/prepare.json",
    params:
        run_dir=lambda wildcards, output: os.path.dirname(output.info),
        spec=config["task"]["spec"],
        task_params=shlex.quote(json.dumps(config["task"]["params"])),
        kinds=shlex.quote(
            config["components"]["kinds"]
            if isinstance(config["components"]["kinds"], str)
            else ",".join(config["components"]["kinds"])
        ),
        include=shlex.quote(",".join(config["components"]["include"])),
        exclude=shlex.quote(",".join(config["components"]["exclude"])),
        unreachable=config["components"]["unreachable"],
    log:
        f"{RUN}/logs/prepare.log",
    conda:
        "../envs/coar.yaml"
    benchmark:
        f"{RUN}/benchmarks/prepare.tsv"
    shell:
        "coar prepare --run-dir {params.run_dir} --task {params.spec} --task-params {params.task_params}"
        " --kinds {params.kinds} --include {params.include} --exclude {params.exclude}"
        " --unreachable {params.unreachable} 2>&1 | tee {log}"
