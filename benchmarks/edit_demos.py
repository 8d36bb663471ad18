"""The five COAR-Edit demos over seeds, each a run of the workflow's `edits` target, and their table.

For every task and seed it writes a run config (config/edit-demos/<task>.yaml with `run:
<task>_s<seed>`, the mask seed and the task's model seed set to the seed) and runs

    snakemake edits --snakefile workflow/Snakefile --configfile <that config> --cores 1

in `--workdir`, then reads every results/<task>_s<seed>/edits/<edit>/report.json and prints one
markdown row per edit: mean ± sample std over the seeds of the chosen k, the target's and the
reference's accuracy before -> after on the attributed test examples and on the validation
examples (where k was chosen), the realised / predicted mean change of the target outputs on the
attributed examples, and how many seeds passed the edit's checks.

    python benchmarks/edit_demos.py                              # 5 tasks x seeds 0-4 (docs/results.md)
    python benchmarks/edit_demos.py --tasks backdoor --seeds 0   # one run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
TASKS = ("fix_errors", "forget_class", "subpopulation", "backdoor", "typographic")


def seed_config(task: str, seed: int, folder: Path) -> Path:
    """config/edit-demos/<task>.yaml for one seed, written into `folder`: its path."""
    config = yaml.safe_load((REPO / "config" / "edit-demos" / f"{task}.yaml").read_text())
    config["run"], config["seed"] = f"{task}_s{seed}", seed
    config["task"]["params"]["seed"] = seed
    path = folder / f"{task}_s{seed}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_edits(config: Path, workdir: Path, cores: int) -> float:
    """`snakemake edits` for one run config, its output in <workdir>/logs/<config name>.log; its wall time in seconds."""
    log = workdir / "logs" / f"{config.stem}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(["snakemake", "edits", "--snakefile", str(REPO / "workflow" / "Snakefile"), "--configfile",
                               str(config), "--cores", str(cores), "--directory", str(workdir)], stdout=out, stderr=out,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    if done.returncode:
        raise RuntimeError(f"snakemake failed for {config} (exit {done.returncode}); see {log}")
    return time.perf_counter() - start


def headline(report: dict) -> dict[str, float]:
    """The numbers the table shows, from one edit's report.json (accuracies in %)."""
    m = report["metrics"]
    pct = lambda key, i: 100 * m[key]["accuracy"][i]  # noqa: E731
    return {"k": report["k"],
            **{f"{key}_{when}": pct(key, i) for key in ("target", "reference", "validation_target", "validation_reference")
               for i, when in enumerate(("before", "after"))},
            "ratio": report["predicted_vs_realised"]["realised_over_predicted"]["target"],
            "passed": float(report["checks"]["passed"])}


def spread(values: list[float | None], digits: int = 1) -> str:
    """mean ± sample std of the defined values (n/a when none)."""
    x = np.array([v for v in values if v is not None], dtype=np.float64)
    if not len(x):
        return "n/a"
    return f"{x.mean():.{digits}f} ± {x.std(ddof=1):.{digits}f}" if len(x) > 1 else f"{x.mean():.{digits}f}"


def table(rows: dict[str, list[dict]]) -> str:
    """Markdown: one row per edit, mean ± std over its seeds."""
    lines = ["| edit | seeds | k | target acc. before → after (test) | reference acc. before → after (test) | "
             "target acc. before → after (validation) | reference acc. before → after (validation) | "
             "realised / predicted (target) | checks passed |",
             "|---|---:|---:|---|---|---|---|---:|---:|"]
    for name, runs in rows.items():
        col = lambda key: [r[key] for r in runs]  # noqa: E731
        pair = lambda key: f"{spread(col(key + '_before'))} → {spread(col(key + '_after'))}"  # noqa: E731
        lines.append(f"| {name} | {len(runs)} | {spread(col('k'))} | {pair('target')} | {pair('reference')} | "
                     f"{pair('validation_target')} | {pair('validation_reference')} | "
                     f"{spread(col('ratio'), 2)} | "
                     f"{int(sum(col('passed')))}/{len(runs)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--workdir", type=Path, default=Path("results-edit-demos"),
                        help="where the runs go (results/<task>_s<seed>/) and edit_demos.json/.md are written")
    parser.add_argument("--cores", type=int, default=1)
    args = parser.parse_args()
    (args.workdir / "configs").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {}
    seconds = {}
    for task in args.tasks:
        for seed in args.seeds:
            run = f"{task}_s{seed}"
            seconds[run] = run_edits(seed_config(task, seed, args.workdir / "configs"), args.workdir, args.cores)
            print(f"{run}: {seconds[run]:.0f} s", file=sys.stderr, flush=True)
            for report in sorted((args.workdir / "results" / run / "edits").glob("*/report.json")):
                rows.setdefault(report.parent.name, []).append({"seed": seed, **headline(json.loads(report.read_text()))})
    markdown = table(rows)
    (args.workdir / "edit_demos.md").write_text(markdown)
    (args.workdir / "edit_demos.json").write_text(json.dumps({"runs": rows, "seconds": seconds}, indent=1))
    print(markdown)


if __name__ == "__main__":
    main()
