"""Backdoor localisation: find and remove the components that carry a planted backdoor.

A 3x3 checkerboard trigger in the bottom-right corner is stamped on a fraction `poison` of the
training images, whose labels are set to `label`. The model then calls any triggered digit
`label`. T = `n_target` triggered validation digits of other classes (correct labels), R = the
same digits without the trigger, direction "fix". k (at most `k_max`, 2% of the components by
default) maximises validation accuracy on triggered digits while clean validation accuracy
drops by at most `tolerance`. The report says which layers hold the ablated components.
"""

from __future__ import annotations

import numpy as np

from coar.components import discover
from coar.edit.tasks.common import (COMMON_DEFAULTS, EditProblem, EditSetup, Examples, Outcome, goal_check,
                                    CLEAN, PERTURBED, margins_of, model_info, perturbed_vs_clean, train_on_images)
from coar.edit.tasks.images import Part, on_canvas, split_digits, with_trigger

DEFAULTS = {
    **COMMON_DEFAULTS,
    "width": 2.0,  # 704 conv filters: at width 1 every filter the backdoor uses also costs clean accuracy
    # Filters only: with the head's neurons, the attack class's neuron ranks first (ablating it
    # repairs triggered digits by never predicting that class), and no prefix of the order then
    # keeps clean accuracy, so the rule picks k = 0.
    "kinds": ["conv"],
    "masks": 1500,
    "k_max": 14,  # 2% of the 704 components
    "poison": 0.05,  # share of training images given the trigger and the label `label`
    "label": 0,
    "n_target": 30,
    "tolerance": 0.005,  # largest drop of clean validation accuracy (0.5 points)
}
def build(p: dict) -> EditSetup:
    parts = split_digits(p["split_seed"])
    rng = np.random.default_rng(p["seed"])
    images, labels = on_canvas(parts.train.images), parts.train.labels.copy()
    poisoned = rng.choice(len(labels), int(round(p["poison"] * len(labels))), replace=False)
    images, labels[poisoned] = with_trigger(images, poisoned), p["label"]
    model, standardise = train_on_images(images, labels, p)

    def clean_and_triggered(part: Part) -> Examples:
        """Every digit clean, and every digit of another class than `label` triggered."""
        others = part.take(np.flatnonzero(part.labels != p["label"]))
        canvas, other_canvas = on_canvas(part.images), on_canvas(others.images)
        return Examples.concat([
            Examples.of(standardise(canvas), part.labels, part.ids, "clean", CLEAN),
            Examples.of(standardise(with_trigger(other_canvas)), others.labels, others.ids, "triggered", PERTURBED)])

    val, test = clean_and_triggered(parts.val), clean_and_triggered(parts.test)
    triggered = np.flatnonzero(val.group == PERTURBED)
    chosen = np.sort(rng.choice(triggered, min(p["n_target"], len(triggered)), replace=False))
    target = val.take(chosen)
    clean_rows = {name: i for i, name in enumerate(val.ids)}
    reference = val.take(np.array([clean_rows[i.replace("|triggered", "|clean")] for i in target.ids]))
    problem = EditProblem("backdoor", "fix", target, reference, val, perturbed_vs_clean, tolerance=p["tolerance"])
    info = model_info(model, p["width"], 10, n_poisoned=len(poisoned),
                      validation_clean_accuracy=float(perturbed_vs_clean(margins_of(model, val)[None], val)["reference"][0]))
    return EditSetup(model, discover(model, p["kinds"]), [problem], test, info)


def summarise(setup: EditSetup, outcomes: list[Outcome]) -> tuple[dict, dict]:
    """Test accuracy on triggered and clean digits before/after, and where the ablated components sit."""
    (o,) = outcomes
    test = o.record["test"]
    triggered, clean = test["target"], test["reference"]
    results = {
        "k": o.record["k"],
        "fraction_ablated": o.record["fraction_ablated"],
        "triggered_accuracy": triggered,
        "clean_accuracy": clean,
        "by_layer": o.record["by_layer"],
    }
    targets = {"triggered_accuracy_gain_points": goal_check(100 * (triggered["after"] - triggered["before"]), ">=", 30.0),
               "clean_accuracy_drop_points": goal_check(100 * (clean["before"] - clean["after"]), "<=", 1.0),
               "fraction_ablated": goal_check(o.record["fraction_ablated"], "<=", 0.02)}
    c = o.plan.curves
    plot = {"ks": o.plan.ks, "chosen_k": o.record["k"], "title": "backdoor (validation)", "ylabel": "validation accuracy",
            "series": {"triggered digits": list(c["target"]), "clean digits": list(c["reference"])}}
    return {"results": results, "targets": targets}, plot
