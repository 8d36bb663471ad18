"""The five COAR-Edit tasks on offline data (scikit-learn's digits), each reproducible from its params.

    from coar.edit.tasks import run_task
    report = run_task("backdoor", {"seed": 0}, "results/digits/edits/backdoor")

A task module has `DEFAULTS` (every param, documented), `build(params) -> EditSetup` (train
the model, choose the target, reference, validation and test examples) and
`summarise(setup, outcomes) -> (summary, plot)` (headline numbers and the issue's targets).
`run_task` runs the edits between them and writes report.json, the edited weights and a plot;
`coar.edit.tasks.seeds.run_seeds` runs a task over several seeds and reports mean and spread.
"""

from __future__ import annotations

import time
from pathlib import Path

import coar
from coar.atomic import write_json
from coar.edit.planning import save_edit
from coar.edit.plots import metric_vs_k
from coar.edit.tasks import backdoor, fix_errors, forget_class, subpopulation, typographic
from coar.edit.tasks.common import run_setup
from coar.tasks.params import with_defaults

TASKS = {
    "fix_errors": fix_errors,
    "forget_class": forget_class,
    "subpopulation": subpopulation,
    "backdoor": backdoor,
    "typographic": typographic,
}


def run_task(name: str, params: dict, out_dir: str | Path) -> dict:
    """Build task `name`, make its edits, and write into `out_dir`:

    - report.json (written last): params, model info, headline results, the issue's targets
      and whether they are met, one record per edit, timings;
    - model.pt + ablated.json per edit (in `out_dir`, or `out_dir/<edit name>/` when a task
      makes several edits): the edited model's plain state_dict and its ablated components;
    - plots/metric_vs_k.png: the validation metrics against k.
    """
    if name not in TASKS:
        raise ValueError(f"unknown edit task {name!r}; choose from {sorted(TASKS)}")
    module, out_dir = TASKS[name], Path(out_dir)
    p = with_defaults(params, module.DEFAULTS, name)
    start = time.perf_counter()
    setup = module.build(p)
    built = time.perf_counter()
    outcomes = run_setup(setup, masks=p["masks"], alpha=p["alpha"], seed=p["seed"], method=p["method"],
                         k_max=p["k_max"], max_batch=p["max_batch"])
    edited = time.perf_counter()
    summary, plot = module.summarise(setup, outcomes)
    for o in outcomes:
        folder = out_dir if len(outcomes) == 1 else out_dir / o.problem.name
        save_edit(folder, o.edited, setup.components, o.plan.ablated, scores=o.plan.scores,
                  info={"task": name, "edit": o.problem.name, "model": setup.info})
        o.record["weights"] = str((folder / "model.pt").relative_to(out_dir))
    metric_vs_k(plot["ks"], plot["series"], out_dir / "plots" / "metric_vs_k.png", title=plot["title"],
                ylabel=plot.get("ylabel", "validation metric"), chosen_k=plot["chosen_k"])
    report = {
        "task": name,
        "description": (module.__doc__ or "").strip().splitlines()[0],
        "params": p,
        "model": setup.info,
        "n_components": len(setup.components),
        **summary,
        "all_targets_met": all(t["met"] for t in summary["targets"].values()),
        "edits": [o.record for o in outcomes],
        "seconds": {"build": built - start, "attribute_and_edit": edited - built,
                    "total": time.perf_counter() - start},
        "coar_version": coar.__version__,
    }
    write_json(out_dir / "report.json", report)
    return report
