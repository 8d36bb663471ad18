"""Fix model errors: edit each misclassified validation digit on its own, keep the others.

The default digits model classifies every test digit correctly, so this task trains a weaker
one (3 epochs instead of 30) that makes errors to fix. For each misclassified validation
digit: T = that digit, R = a few dozen correctly classified validation digits, direction
"fix"; k is the smallest that makes the digit correct on its own while the accuracy on the
other validation digits drops by at most `tolerance`. Reported: the share of errors fixed and
the change of accuracy on the test digits, which no edit sees.
"""

from __future__ import annotations

import numpy as np

from coar.components import discover
from coar.edit.tasks.common import (COMMON_DEFAULTS, EditProblem, EditSetup, Examples, Outcome, goal_check,
                                    group_accuracy, margins_of, model_info, train_on_images)
from coar.edit.tasks.images import split_digits

DEFAULTS = {
    **COMMON_DEFAULTS,
    "epochs": 3,  # deliberately undertrained: about 95% validation accuracy, so there are errors to fix
    "masks": 2000,  # a single target digit's attribution is noisier than a set's mean
    "n_reference": 40,  # correctly classified validation digits in R
    "tolerance": 0.012,  # largest drop of validation accuracy on the other digits: 3 of the 269
    "max_errors": 100,  # edit at most this many errors (the first ones in validation order)
}
TARGET, OTHERS = 1, 0  # validation groups: the error being fixed, every other validation digit


def metrics(margins: np.ndarray, examples: Examples) -> dict[str, np.ndarray]:
    """target: the error is classified correctly (0 or 1); reference: accuracy on the other digits."""
    return {"target": group_accuracy(margins, examples.group, TARGET),
            "reference": group_accuracy(margins, examples.group, OTHERS)}


def build(p: dict) -> EditSetup:
    parts = split_digits(p["split_seed"])
    model, standardise = train_on_images(parts.train.images, parts.train.labels, p)
    val = Examples.of(standardise(parts.val.images), parts.val.labels, parts.val.ids, "digit", OTHERS)
    test = Examples.of(standardise(parts.test.images), parts.test.labels, parts.test.ids, "digit", OTHERS)
    correct = margins_of(model, val) > 0
    errors = np.flatnonzero(~correct)[: p["max_errors"]]
    if not len(errors):
        raise ValueError("fix_errors: the model classifies every validation digit correctly; train it less (epochs, width)")
    rng = np.random.default_rng(p["seed"])
    reference = val.take(np.sort(rng.choice(np.flatnonzero(correct), min(p["n_reference"], int(correct.sum())), replace=False)))
    problems = []
    for i in errors:
        validation = val.take(np.arange(len(val)))
        validation.group[i] = TARGET
        problems.append(EditProblem(f"error-{parts.val.ids[i]}", "fix", val.take([i]), reference, validation, metrics,
                                    tolerance=p["tolerance"], goal=1.0))
    info = model_info(model, p["width"], 10, validation_accuracy=float(correct.mean()),
                      test_accuracy=float((margins_of(model, test) > 0).mean()), n_errors=len(errors))
    return EditSetup(model, discover(model, p["kinds"]), problems, test, info)


def summarise(setup: EditSetup, outcomes: list[Outcome]) -> tuple[dict, dict]:
    """Share of errors fixed, test accuracy drop per edit (points), and the curves for the plot."""
    fixed = [o.record["target_set"]["accuracy_after"] for o in outcomes]
    drops = [100 * (o.record["test"]["reference"]["before"] - o.record["test"]["reference"]["after"]) for o in outcomes]
    ks = [o.record["k"] for o in outcomes]
    results = {
        "n_errors": len(outcomes),
        "fraction_fixed": float(np.mean(fixed)),
        "median_test_accuracy_drop_points": float(np.median(drops)),
        "mean_test_accuracy_drop_points": float(np.mean(drops)),
        "test_accuracy_drop_points": drops,
        "k": {"median": float(np.median(ks)), "max": max(ks), "per_error": ks},
    }
    targets = {"fraction_fixed": goal_check(results["fraction_fixed"], ">=", 0.8),
               "median_test_accuracy_drop_points": goal_check(results["median_test_accuracy_drop_points"], "<=", 0.5)}
    fixed_at_k = np.mean([o.plan.curves["target"] for o in outcomes], axis=0)
    others_at_k = np.median([o.plan.curves["reference"] for o in outcomes], axis=0)
    plot = {"ks": outcomes[0].plan.ks, "chosen_k": None,
            "title": f"fix errors: {len(outcomes)} single-error edits (validation)",
            "series": {"share of errors fixed at k": list(fixed_at_k), "median accuracy on the other digits at k": list(others_at_k)}}
    return {"results": results, "targets": targets}, plot
