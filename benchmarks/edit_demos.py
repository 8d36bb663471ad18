"""The five COAR-Edit demos over seeds, each a run of the workflow's `edits` target, and their table.

For every task, seed and selection method it writes a run config (config/edit-demos/<task>.yaml
with `run: <task>_s<seed>`, the mask seed and the task's model seed set to the seed, and the
edit's `selection` set) and runs

    snakemake edits --snakefile workflow/Snakefile --configfile <that config> --cores 1

in `--workdir`, then reads every results/<task>_s<seed>/edits/<edit>/report.json. Both selections
of one task and seed edit the same run: the second reuses its attributions (only the edit steps
run again). It prints one markdown row per edit and selection: mean ± sample std over the seeds
of the chosen k, the target's and the reference's accuracy before -> after on the attributed
test examples and on the validation examples (where the set was chosen), the realised /
predicted mean change of the target outputs on the attributed examples, how many seeds passed
the edit's checks, and on how many seeds the demo met its target (TARGETS, test and validation
alike). A per-example edit (fix_errors) shows the median over its examples: k, the reference's
accuracy under each example's edit, and the target accuracy before -> after its own edit.

    python benchmarks/edit_demos.py                              # 5 tasks x seeds 0-4 x both selections (docs/results.md)
    python benchmarks/edit_demos.py --tasks backdoor --seeds 0 --selections verified   # one run
    python benchmarks/edit_demos.py --seeds 0 1 --selections verified --surrogate      # the surrogate predicts
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
SELECTIONS = ("verified", "prefix")
TARGETS = {  # edit -> (what it must reach, in points, as text; the check on one seed's headline)
    "forget_0": ("target <= 10%, reference loss <= 2",
                 lambda h: max(h["target_after"], h["validation_target_after"]) <= 10 and _loss(h) <= 2),
    "subpopulation": ("target +20, reference loss <= 3",
                      lambda h: min(_gain(h, "target"), _gain(h, "validation_target")) >= 20 and _loss(h) <= 3),
    "backdoor": ("target >= 80%, reference loss <= 2",
                 lambda h: min(h["target_after"], h["validation_target_after"]) >= 80 and _loss(h) <= 2),
    "fix_errors": ("target >= 80% fixed, reference loss <= 1", lambda h: h["target_after"] >= 80 and _loss(h) <= 1),
    "typographic": ("target +20, reference loss <= 2",
                    lambda h: min(_gain(h, "target"), _gain(h, "validation_target")) >= 20 and _loss(h) <= 2),
}


def _gain(h: dict, key: str) -> float:
    return h[f"{key}_after"] - h[f"{key}_before"]


def _loss(h: dict) -> float:
    """The larger reference accuracy loss of test and validation (a per-example edit: the medians)."""
    return max(-_gain(h, "reference"), -_gain(h, "validation_reference"))


def seed_config(task: str, seed: int, selection: str, folder: Path, surrogate: bool = False) -> Path:
    """config/edit-demos/<task>.yaml for one seed and selection (and the run's surrogate, which then
    predicts the edit), written into `folder`: its path."""
    config = yaml.safe_load((REPO / "config" / "edit-demos" / f"{task}.yaml").read_text())
    config["run"], config["seed"] = f"{task}_s{seed}", seed
    config["task"]["params"]["seed"] = seed
    for edit in config["edits"]:
        edit["selection"] = selection
    if surrogate:
        config["surrogate"] = {"kind": "projected_quadratic"}
    path = folder / f"{task}_s{seed}_{selection}{'_surrogate' if surrogate else ''}.yaml"
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
    if report.get("per_example"):
        return per_example_headline(report)
    m, ratios = report["metrics"], report["predicted_vs_realised"]
    pct = lambda key, i: 100 * m[key]["accuracy"][i]  # noqa: E731
    # realised / predicted by what chose the set: the surrogate where the run has one
    ratio = ratios.get("surrogate_realised_over_predicted", ratios["realised_over_predicted"])["target"]
    return {"k": report["k"],
            **{f"{key}_{when}": pct(key, i) for key in ("target", "reference", "validation_target", "validation_reference")
               for i, when in enumerate(("before", "after"))},
            "ratio": ratio,
            "passed": float(report["checks"]["passed"])}


def per_example_headline(report: dict) -> dict[str, float]:
    """A per-example edit's headline: medians over its examples; the target is its examples'
    accuracy before and after each one's own edit."""
    summary = report["per_example"]
    median = lambda key, i: 100 * float(np.median([e[key][i] for e in summary["examples"]]))  # noqa: E731
    target = report["metrics"]["target"]["accuracy"]
    return {"k": float(np.median([e["k"] for e in summary["examples"]])),
            "target_before": 100 * target[0], "target_after": 100 * target[1],
            "validation_target_before": None, "validation_target_after": None,
            **{f"{name}_{when}": median(key, i) for name, key in (("reference", "test_reference_accuracy"),
                                                               ("validation_reference", "reference_accuracy"))
               for i, when in enumerate(("before", "after"))},
            "ratio": None, "passed": float(report["checks"]["passed"])}


def met(edit: str, h: dict) -> bool | None:
    """Whether one seed's edit met its demo's target (None: no target for this edit)."""
    return TARGETS[edit][1](h) if edit in TARGETS else None


def spread(values: list[float | None], digits: int = 1) -> str:
    """mean ± sample std of the defined values (n/a when none)."""
    x = np.array([v for v in values if v is not None], dtype=np.float64)
    if not len(x):
        return "n/a"
    return f"{x.mean():.{digits}f} ± {x.std(ddof=1):.{digits}f}" if len(x) > 1 else f"{x.mean():.{digits}f}"


def table(rows: dict[tuple[str, str], list[dict]]) -> str:
    """Markdown: one row per edit and selection, mean ± std over its seeds."""
    lines = ["| edit | selection | seeds | k | target acc. before → after (test) | reference acc. before → after (test) | "
             "target acc. before → after (validation) | reference acc. before → after (validation) | "
             "realised / predicted (target) | checks passed | target met (seeds) |",
             "|---|---|---:|---:|---|---|---|---|---:|---:|---|"]
    for (name, selection), runs in rows.items():
        col = lambda key: [r[key] for r in runs]  # noqa: E731
        pair = lambda key: f"{spread(col(key + '_before'))} → {spread(col(key + '_after'))}"  # noqa: E731
        reached = [r["seed"] for r in runs if r["met"]]
        goal = TARGETS[name][0] if name in TARGETS else "-"
        lines.append(f"| {name} | {selection} | {len(runs)} | {spread(col('k'))} | {pair('target')} | "
                     f"{pair('reference')} | {pair('validation_target')} | {pair('validation_reference')} | "
                     f"{spread(col('ratio'), 2)} | {int(sum(col('passed')))}/{len(runs)} | "
                     f"{len(reached)}/{len(runs)} ({goal}; met on {reached or 'none'}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--selections", nargs="+", default=list(SELECTIONS), choices=SELECTIONS)
    parser.add_argument("--workdir", type=Path, default=Path("results-edit-demos"),
                        help="where the runs go (results/<task>_s<seed>/) and edit_demos.json/.md are written")
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--surrogate", action="store_true",
                        help="fit each run's surrogate (projected_quadratic): it predicts and judges the edits, and "
                             "realised / predicted is the surrogate's; the selection is shown as '<selection>+surrogate'")
    args = parser.parse_args()
    (args.workdir / "configs").mkdir(parents=True, exist_ok=True)
    rows: dict[tuple[str, str], list[dict]] = {}
    seconds = {}
    for task in args.tasks:
        for seed in args.seeds:
            for selection in args.selections:
                run, shown = f"{task}_s{seed}", selection + ("+surrogate" if args.surrogate else "")
                config = seed_config(task, seed, selection, args.workdir / "configs", args.surrogate)
                seconds[f"{run}_{shown}"] = run_edits(config, args.workdir, args.cores)
                print(f"{run} ({shown}): {seconds[f'{run}_{shown}']:.0f} s", file=sys.stderr, flush=True)
                for report in sorted((args.workdir / "results" / run / "edits").glob("*/report.json")):
                    h = headline(json.loads(report.read_text()))
                    rows.setdefault((report.parent.name, shown), []).append(
                        {"seed": seed, **h, "met": met(report.parent.name, h)})
    markdown = table(rows)
    (args.workdir / "edit_demos.md").write_text(markdown)
    (args.workdir / "edit_demos.json").write_text(json.dumps({"runs": {f"{e} ({s})": r for (e, s), r in rows.items()},
                                                              "seconds": seconds}, indent=1))
    print(markdown)


if __name__ == "__main__":
    main()
