import json
import shlex
from dataclasses import asdict

from coar.resources import RunShape


rule prepare:
    """Build the task (the default trains its CNN), discover its components, check on two examples
    that each can be ablated exactly (refusing or dropping those that cannot), save both."""
    output:
        weights=f"{RUN}/weights.safetensors",
        arrays=f"{RUN}/examples.safetensors",
        ids=f"{RUN}/example_ids.json",
        components=f"{RUN}/components.json",
        info=f"{RUN}/prepare.json",
    params:
        run_dir=lambda wildcards, output: os.path.dirname(output.info),
        spec=shlex.quote(config["task"]["spec"]),
        checks=shell_options({"masks": config["masks"], "method": config["solver"]["method"]}),
        task_params=shlex.quote(json.dumps(config["task"]["params"])),
        kinds=shlex.quote(
            config["components"]["kinds"]
            if isinstance(config["components"]["kinds"], str)
            else ",".join(config["components"]["kinds"])
        ),
        include=shlex.quote(",".join(config["components"]["include"])),
        exclude=shlex.quote(",".join(config["components"]["exclude"])),
        loader=loader_options(),
        unreachable=config["components"]["unreachable"],
        dry_pass=shell_options({
            "masks-per-pass": config["masks_per_pass"],
            "max-batch": config["max_batch"],
            "run-shape": json.dumps(asdict(RunShape.of_config(config))),
        }),
    log:
        f"{RUN}/logs/prepare.log",
    benchmark:
        f"{RUN}/benchmarks/prepare.tsv"
    shell:
        "coar prepare --run-dir {params.run_dir:q} --task {params.spec} --task-params {params.task_params}"
        " --kinds {params.kinds} --include {params.include} --exclude {params.exclude} {params.checks} {params.loader}"
        " --unreachable {params.unreachable:q} {params.dry_pass}"
        " 2>&1 | tee {log:q}"
