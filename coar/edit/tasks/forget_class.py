"""Forget a class: make the model fail on one digit class while every other class keeps its accuracy.

T = `n_target` validation digits of the class, R = `n_reference_per_class` validation digits of
every other class, direction "forget" (lower the correct-class margin of T). k is the smallest
that brings the class's validation accuracy to at most 10% while no other class loses more
than `tolerance` of validation accuracy. Reported on the test digits, per class.
"""

from __future__ import annotations

import numpy as np

from coar.components import discover
from coar.edit.tasks.common import (COMMON_DEFAULTS, EditProblem, EditSetup, Examples, Outcome, goal_check,
                                    group_accuracy, margins_of, model_info, train_on_images)
from coar.edit.tasks.images import split_digits

DEFAULTS = {
    **COMMON_DEFAULTS,
    "label": 0,  # the class to forget
    "n_target": 20,
    "n_reference_per_class": 4,
    "tolerance": 0.04,  # largest validation accuracy drop of any other class (about one digit of ~27)
    "max_class_accuracy": 0.10,  # the goal: the class's accuracy after the edit
}
CLASSES = 10


def make_metrics(label: int):
    """target: 1 - accuracy on `label`; reference: the worst change of another class's accuracy vs row 0."""

    def metrics(margins: np.ndarray, examples: Examples) -> dict[str, np.ndarray]:
        per_class = np.stack([group_accuracy(margins, examples.group, c) for c in range(CLASSES)])
        others = np.delete(per_class, label, axis=0)
        return {"target": 1 - per_class[label], "reference": (others - others[:, :1]).min(axis=0),
                "other_classes_mean_accuracy": others.mean(axis=0),
                **{f"class_{c}_accuracy": per_class[c] for c in range(CLASSES)}}

    return metrics


def build(p: dict) -> EditSetup:
    label = int(p["label"])
    if not 0 <= label < CLASSES:
        raise ValueError(f"forget_class: label must be a digit 0-9, got {label}")
    parts = split_digits(p["split_seed"])
    model, standardise = train_on_images(parts.train.images, parts.train.labels, p)
    val = Examples.of(standardise(parts.val.images), parts.val.labels, parts.val.ids, "digit", parts.val.labels)
    test = Examples.of(standardise(parts.test.images), parts.test.labels, parts.test.ids, "digit", parts.test.labels)
    rng = np.random.default_rng(p["seed"])

    def pick(c: int, n: int) -> np.ndarray:
        members = np.flatnonzero(val.group == c)
        return rng.choice(members, min(n, len(members)), replace=False)

    target = val.take(np.sort(pick(label, p["n_target"])))
    reference = val.take(np.sort(np.concatenate([pick(c, p["n_reference_per_class"]) for c in range(CLASSES) if c != label])))
    problem = EditProblem(f"forget-{label}", "forget", target, reference, val, make_metrics(label),
                          tolerance=p["tolerance"], goal=1 - p["max_class_accuracy"])
    info = model_info(model, p["width"], CLASSES, label=label, validation_accuracy=float((margins_of(model, val) > 0).mean()),
                      test_accuracy=float((margins_of(model, test) > 0).mean()))
    return EditSetup(model, discover(model, p["kinds"]), [problem], test, info)


def summarise(setup: EditSetup, outcomes: list[Outcome]) -> tuple[dict, dict]:
    """The class's test accuracy before/after and every other class's drop (points)."""
    (o,) = outcomes
    label = setup.info["label"]
    test = o.record["test"]
    drops = {c: 100 * (test[f"class_{c}_accuracy"]["before"] - test[f"class_{c}_accuracy"]["after"])
             for c in range(CLASSES) if c != label}
    results = {
        "label": label,
        "k": o.record["k"],
        "class_accuracy": test[f"class_{label}_accuracy"],
        "other_classes_mean_accuracy": test["other_classes_mean_accuracy"],
        "other_class_drop_points": drops,
        "largest_other_class_drop_points": max(drops.values()),
        "by_layer": o.record["by_layer"],
    }
    targets = {"class_accuracy_after": goal_check(test[f"class_{label}_accuracy"]["after"], "<=", 0.10),
               "largest_other_class_drop_points": goal_check(results["largest_other_class_drop_points"], "<=", 2.0)}
    c = o.plan.curves
    plot = {"ks": o.plan.ks, "chosen_k": o.record["k"], "title": f"forget class {label} (validation)",
            "ylabel": "validation accuracy",
            "series": {f"class {label} accuracy": list(c[f"class_{label}_accuracy"]),
                       "other classes, mean accuracy": list(c["other_classes_mean_accuracy"]),
                       "other classes, worst accuracy change": list(c["reference"])}}
    return {"results": results, "targets": targets}, plot
