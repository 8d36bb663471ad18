"""One edit task over several seeds: a report per seed, then each target's mean and spread.

A task's `seed` sets what a user re-running it would change: the model's initialisation and
training order, which examples form T and R, and the attribution masks. The targets are
judged on the mean over seeds; the spread says how much one run can differ from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from coar.atomic import atomic_path, write_json
from coar.edit.tasks import run_task
from coar.edit.tasks.common import goal_check


def seed_folder(out_dir: str | Path, seed: int) -> Path:
    """Where seed `seed`'s report and edited weights go: <out_dir>/seed-<seed>/."""
    return Path(out_dir) / f"seed-{seed}"


def across_seeds(name: str, reports: Sequence[dict]) -> dict:
    """Every target's per-seed values, mean, sample standard deviation, min and max, judged on the mean."""
    if not reports:
        raise ValueError("no reports to summarise")
    seeds = [r["params"]["seed"] for r in reports]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{name}: reports of seeds {seeds} repeat a seed")
    names = list(reports[0]["targets"])
    targets = {}
    for t in names:
        checks = [r["targets"][t] for r in reports]
        values = np.array([c["value"] for c in checks], dtype=np.float64)
        mean = float(values.mean())
        targets[t] = {
            "values": values.tolist(),
            "mean": mean,
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "min": float(values.min()),
            "max": float(values.max()),
            "met_per_seed": [bool(c["met"]) for c in checks],
            **{k: v for k, v in goal_check(mean, checks[0]["comparison"], checks[0]["threshold"]).items() if k != "value"},
        }
    return {
        "task": name,
        "seeds": seeds,
        "params": {k: v for k, v in reports[0]["params"].items() if k != "seed"},
        "targets": targets,
        "all_targets_met_on_mean": all(t["met"] for t in targets.values()),
        "k": [r["results"]["k"] if "k" in r["results"] else None for r in reports],
    }


def seeds_table(summary: dict) -> str:
    """Markdown: one row per target, with each seed's value, mean ± std, the target, and whether the mean meets it."""
    seeds = summary["seeds"]
    lines = [f"| {summary['task']} target | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std | target | met on mean |",
             "|---|" + "---:|" * len(seeds) + "---:|---|---|"]
    for name, t in summary["targets"].items():
        cells = " | ".join(f"{v:.3g}" for v in t["values"])
        lines.append(f"| {name} | {cells} | {t['mean']:.3g} ± {t['std']:.2g} | {t['comparison']} {t['threshold']:g} | "
                     f"{'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def run_seeds(name: str, params: dict, seeds: Sequence[int], out_dir: str | Path) -> dict:
    """Run task `name` once per seed (into seed-<s>/), then write seeds.json and seeds.md into `out_dir`.

    `params` must not set `seed`: the seeds list does.
    """
    if "seed" in params:
        raise ValueError(f"params set seed={params['seed']} and seeds={list(seeds)} are given too; use one of them")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {list(seeds)}")
    reports = [run_task(name, {**params, "seed": int(s)}, seed_folder(out_dir, int(s))) for s in seeds]
    summary = across_seeds(name, reports)
    with atomic_path(Path(out_dir) / "seeds.md") as tmp:
        Path(tmp).write_text(seeds_table(summary))
    write_json(Path(out_dir) / "seeds.json", summary)  # written last: its presence means the run is complete
    return summary
