"""Typographic-style attack: a model that reads a rendered glyph, fooled by a misleading one.

A fraction `glyph_fraction` of the training images carries a 3x5 glyph of its own label in the
top-right corner, drawn in a brighter ink (`ink`) than any handwriting, as rendered text differs
from the photo it is printed on. The model learns to read it. Clean digits carry no glyph;
attacked digits carry the glyph of another digit, which turns many predictions to that digit.
T = `n_target` attacked validation digits (correct labels), R = the same digits clean,
direction "fix". k maximises attacked validation accuracy while clean validation accuracy
drops by at most `tolerance`.
"""

from __future__ import annotations

import numpy as np

from coar.components import discover
from coar.edit.tasks.common import (COMMON_DEFAULTS, EditProblem, EditSetup, Examples, Outcome, goal_check,
                                    CLEAN, PERTURBED, margins_of, model_info, perturbed_vs_clean, train_on_images)
from coar.edit.tasks.images import Part, on_canvas, split_digits, with_glyph

DEFAULTS = {
    **COMMON_DEFAULTS,
    "glyph_fraction": 0.8,  # share of training images with the glyph of their label
    "ink": 3.0,  # glyph intensity (handwriting pixels lie in [0, 1])
    # One ablated stem filter can cost this model 20 points of clean accuracy: effects that
    # strong are far from additive at alpha = 0.05 (18 ablated per mask), so masks ablate fewer.
    "alpha": 0.01,
    "masks": 2000,
    "n_target": 30,
    "tolerance": 0.005,  # largest drop of clean validation accuracy (0.5 points)
}
def build(p: dict) -> EditSetup:
    parts = split_digits(p["split_seed"])
    rng = np.random.default_rng(p["seed"])
    labels = parts.train.labels
    captioned = np.flatnonzero(rng.random(len(labels)) < p["glyph_fraction"])
    images = with_glyph(on_canvas(parts.train.images), labels[captioned], captioned, p["ink"])
    model, standardise = train_on_images(images, labels, p)

    def clean_and_attacked(part: Part) -> Examples:
        """Every digit without a glyph, and with the glyph of a random other digit."""
        canvas = on_canvas(part.images)
        misleading = (part.labels + rng.integers(1, 10, len(part.labels))) % 10
        return Examples.concat([
            Examples.of(standardise(canvas), part.labels, part.ids, "clean", CLEAN),
            Examples.of(standardise(with_glyph(canvas, misleading, ink=p["ink"])), part.labels, part.ids, "attacked", PERTURBED)])

    val, test = clean_and_attacked(parts.val), clean_and_attacked(parts.test)
    n = len(parts.val.labels)
    chosen = np.sort(rng.choice(n, min(p["n_target"], n), replace=False))
    problem = EditProblem("typographic", "fix", val.take(n + chosen), val.take(chosen), val, perturbed_vs_clean,
                          tolerance=p["tolerance"])
    clean_accuracy = perturbed_vs_clean(margins_of(model, val)[None], val)["reference"][0]
    info = model_info(model, p["width"], 10, validation_clean_accuracy=float(clean_accuracy))
    return EditSetup(model, discover(model, p["kinds"]), [problem], test, info)


def summarise(setup: EditSetup, outcomes: list[Outcome]) -> tuple[dict, dict]:
    """Test accuracy on attacked and clean digits before/after."""
    (o,) = outcomes
    test = o.record["test"]
    attacked, clean = test["target"], test["reference"]
    results = {"k": o.record["k"], "attacked_accuracy": attacked, "clean_accuracy": clean, "by_layer": o.record["by_layer"]}
    targets = {"attacked_accuracy_gain_points": goal_check(100 * (attacked["after"] - attacked["before"]), ">=", 20.0),
               "clean_accuracy_drop_points": goal_check(100 * (clean["before"] - clean["after"]), "<=", 1.0)}
    c = o.plan.curves
    plot = {"ks": o.plan.ks, "chosen_k": o.record["k"], "title": "typographic attack (validation)",
            "ylabel": "validation accuracy",
            "series": {"attacked digits": list(c["target"]), "clean digits": list(c["reference"])}}
    return {"results": results, "targets": targets}, plot
