"""Subpopulation shift: a digits variant with a spurious background, like Waterbirds.

Label y: is the digit 5 or more. Spurious feature s: a grey band around the digit on a 12x12
canvas (s = 1) or none (s = 0). In training s = y for a share `correlation` of the images, so
the groups with s != y are rare and the model leans on the background. Test and validation
digits appear once with each background, so all four groups `y<y>_s<s>` are equally large
there; `minority` (s != y) and `majority` (s = y) are their unions. The edit
(config/edit-demos/subpopulation.yaml) raises the minority's margins, keeping the majority's.
"""

from __future__ import annotations

import numpy as np

from coar.task import Task
from coar.tasks.demos.images import Part, Standardiser, on_canvas, split_digits, with_band
from coar.tasks.demos.labelled import Labelled, demo_task
from coar.tasks.demos.training import train_on_images
from coar.tasks.params import with_defaults

DEFAULTS = {
    "seed": 0,  # model initialisation, training order and which training images break the correlation
    "split_seed": 0,  # which digits are train, validation and test images
    "width": 1.0,
    "epochs": 30,
    "n_test": 100,  # test digits attributed (chosen by split_seed); each appears in two variants
    "correlation": 0.97,  # share of training images whose background agrees with the label
    "band": 0.3,  # grey level of the background band
}
UNIONS = {"minority": ("y0_s1", "y1_s0"), "majority": ("y0_s0", "y1_s1")}


def both_backgrounds(part: Part, standardise: Standardiser, band: float) -> Labelled:
    """Every digit without the band and with it, labelled y = digit >= 5, grouped by (y, s)."""
    y = (part.labels >= 5).astype(np.int64)
    canvas = on_canvas(part.images)
    return Labelled.concat([
        Labelled.of(standardise(with_band(canvas, np.arange(len(y)) if s else np.arange(0), band)), y, part.ids,
                    f"background{s}", [f"y{label}_s{s}" for label in y])
        for s in (0, 1)])


def task(params: dict) -> Task:
    """Train the background-leaning model; attribute the test digits, each with both backgrounds."""
    p = with_defaults(params, DEFAULTS, "subpopulation task")
    parts = split_digits(int(p["split_seed"]))
    rng = np.random.default_rng(int(p["seed"]))
    y_train = (parts.train.labels >= 5).astype(np.int64)
    s_train = np.where(rng.random(len(y_train)) < p["correlation"], y_train, 1 - y_train)
    images = with_band(on_canvas(parts.train.images), np.flatnonzero(s_train), p["band"])
    model, standardise = train_on_images(images, y_train, width=float(p["width"]), epochs=int(p["epochs"]),
                                         seed=int(p["seed"]), num_classes=2)
    fractions = {f"y{y}_s{s}": float(np.mean((y_train == y) & (s_train == s))) for y in (0, 1) for s in (0, 1)}
    test = parts.test.sample(int(p["n_test"]), int(p["split_seed"]))
    return demo_task(model, both_backgrounds(test, standardise, p["band"]),
                     both_backgrounds(parts.val, standardise, p["band"]),
                     {"task": "subpopulation", "params": p, "training_group_fractions": fractions}, UNIONS)
