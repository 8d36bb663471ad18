"""Subpopulation robustness: a digits variant with a spurious background, like Waterbirds.

Label y: is the digit 5 or more. Spurious feature s: a grey background band around the digit
(s = 1) or none (s = 0). In training s = y for a fraction `correlation` of the images, so the
groups (y, s) with s != y are rare and the model leans on the background. Validation and test
digits appear once with each background, so all four groups are equally large there.
T = `n_per_group` validation examples of each minority group, R = as many of each majority
group, direction "fix". k maximises validation worst-group accuracy while the average accuracy
(groups weighted as in training) drops by at most `tolerance`.
"""

from __future__ import annotations

import numpy as np

from coar.components import discover
from coar.edit.tasks.common import (COMMON_DEFAULTS, EditProblem, EditSetup, Examples, Outcome, goal_check,
                                    group_accuracy, margins_of, model_info, train_on_images)
from coar.edit.tasks.images import Part, on_canvas, split_digits, with_band

DEFAULTS = {
    **COMMON_DEFAULTS,
    "correlation": 0.97,  # share of training images whose background agrees with the label
    "band": 0.3,  # grey level of the background band
    "n_per_group": 20,  # examples of each group in T (minority) and R (majority)
    "tolerance": 0.02,  # largest drop of validation average accuracy
    "kinds": ["conv"],  # filters only; with the head's two neurons the edit stops at k = 7 (+17 points, not +36)
}
GROUPS = [(y, s) for y in (0, 1) for s in (0, 1)]  # group index 2 y + s
MINORITY, MAJORITY = [1, 2], [0, 3]


def group_name(g: int) -> str:
    y, s = GROUPS[g]
    return f"y{y}_s{s}"


def make_metrics(weights: np.ndarray):
    """target: worst-group accuracy; reference: average accuracy with groups weighted as in training."""

    def metrics(margins: np.ndarray, examples: Examples) -> dict[str, np.ndarray]:
        per_group = np.stack([group_accuracy(margins, examples.group, g) for g in range(len(GROUPS))])
        return {"target": per_group.min(axis=0), "reference": weights @ per_group,
                "group_balanced_accuracy": per_group.mean(axis=0),
                **{f"group_{group_name(g)}_accuracy": per_group[g] for g in range(len(GROUPS))}}

    return metrics


def build(p: dict) -> EditSetup:
    parts = split_digits(p["split_seed"])
    rng = np.random.default_rng(p["seed"])
    y_train = (parts.train.labels >= 5).astype(np.int64)
    s_train = np.where(rng.random(len(y_train)) < p["correlation"], y_train, 1 - y_train)
    train_images = with_band(on_canvas(parts.train.images), np.flatnonzero(s_train), p["band"])
    model, standardise = train_on_images(train_images, y_train, p, num_classes=2)
    weights = np.array([np.mean((y_train == y) & (s_train == s)) for y, s in GROUPS])

    def both_backgrounds(part: Part) -> Examples:
        y = (part.labels >= 5).astype(np.int64)
        canvas = on_canvas(part.images)
        return Examples.concat([
            Examples.of(standardise(with_band(canvas, np.arange(len(y)) if s else np.arange(0), p["band"])), y, part.ids,
                        f"background{s}", 2 * y + s)
            for s in (0, 1)])

    val, test = both_backgrounds(parts.val), both_backgrounds(parts.test)
    pick = lambda groups: np.sort(np.concatenate([  # noqa: E731
        rng.choice(np.flatnonzero(val.group == g), p["n_per_group"], replace=False) for g in groups]))
    problem = EditProblem("subpopulation", "fix", val.take(pick(MINORITY)), val.take(pick(MAJORITY)), val,
                          make_metrics(weights), tolerance=p["tolerance"])
    info = model_info(model, p["width"], 2, training_group_fractions={group_name(g): float(w) for g, w in enumerate(weights)},
                      validation_accuracy=float((margins_of(model, val) > 0).mean()))
    return EditSetup(model, discover(model, p["kinds"]), [problem], test, info)


def summarise(setup: EditSetup, outcomes: list[Outcome]) -> tuple[dict, dict]:
    """Test worst-group and average accuracy before/after, per group too."""
    (o,) = outcomes
    test = o.record["test"]
    worst, average = test["target"], test["reference"]
    results = {
        "k": o.record["k"],
        "worst_group_accuracy": worst,
        "average_accuracy": average,
        "group_balanced_accuracy": test["group_balanced_accuracy"],
        "groups": {group_name(g): test[f"group_{group_name(g)}_accuracy"] for g in range(len(GROUPS))},
        "examples_per_group": o.problem.target.group.tolist().count(MINORITY[0]),
        "by_layer": o.record["by_layer"],
    }
    targets = {"worst_group_gain_points": goal_check(100 * (worst["after"] - worst["before"]), ">=", 15.0),
               "average_accuracy_drop_points": goal_check(100 * (average["before"] - average["after"]), "<=", 3.0),
               "examples_per_group": goal_check(results["examples_per_group"], "<=", 20)}
    c = o.plan.curves
    plot = {"ks": o.plan.ks, "chosen_k": o.record["k"], "title": "subpopulation robustness (validation)",
            "ylabel": "validation accuracy",
            "series": {"worst group": list(c["target"]), "average (training weights)": list(c["reference"]),
                       **{f"group {group_name(g)}": list(c[f"group_{group_name(g)}_accuracy"]) for g in range(len(GROUPS))}}}
    return {"results": results, "targets": targets}, plot
