"""Typographic attack: a digits model that reads a rendered glyph, fooled by a misleading one.

A share `glyph_fraction` of the training images carries a 3x5 glyph of its own label in the
top-right corner of a 12x12 canvas, drawn in a brighter ink (`ink`) than any handwriting, as
rendered text differs from the photo it is printed on. The attributed examples are the test
digits, each once without a glyph (group `clean`) and once with the glyph of a random other
digit (group `attacked`, correct labels); the validation digits come the same two ways. The edit
(config/edit-demos/typographic.yaml) raises the attacked digits' margins, keeping the clean ones.
"""

from __future__ import annotations

import numpy as np

from coar.task import Task
from coar.tasks.demos.images import Part, Standardiser, on_canvas, split_digits, with_glyph
from coar.tasks.demos.labelled import Labelled, demo_task
from coar.tasks.demos.training import train_on_images
from coar.tasks.params import with_defaults

DEFAULTS = {
    "seed": 0,  # model initialisation, training order, captioned images and misleading glyphs
    "split_seed": 0,  # which digits are train, validation and test images
    "width": 1.0,
    "epochs": 30,
    "n_test": 100,  # test digits attributed (chosen by split_seed); each appears in two variants
    "glyph_fraction": 0.8,  # share of training images with the glyph of their label
    "ink": 3.0,  # glyph intensity (handwriting pixels lie in [0, 1])
}


def clean_and_attacked(part: Part, standardise: Standardiser, ink: float, rng: np.random.Generator) -> Labelled:
    """Every digit without a glyph, and with the glyph of a random other digit."""
    canvas = on_canvas(part.images)
    misleading = (part.labels + rng.integers(1, 10, len(part.labels))) % 10
    return Labelled.concat([
        Labelled.of(standardise(canvas), part.labels, part.ids, "clean", "clean"),
        Labelled.of(standardise(with_glyph(canvas, misleading, ink=ink)), part.labels, part.ids, "attacked", "attacked")])


def task(params: dict) -> Task:
    """Train the glyph-reading model; attribute the test digits, clean and attacked."""
    p = with_defaults(params, DEFAULTS, "typographic task")
    parts = split_digits(int(p["split_seed"]))
    rng = np.random.default_rng(int(p["seed"]))
    labels = parts.train.labels
    captioned = np.flatnonzero(rng.random(len(labels)) < p["glyph_fraction"])
    images = with_glyph(on_canvas(parts.train.images), labels[captioned], captioned, p["ink"])
    model, standardise = train_on_images(images, labels, width=float(p["width"]), epochs=int(p["epochs"]),
                                         seed=int(p["seed"]))
    validation = clean_and_attacked(parts.val, standardise, p["ink"], rng)
    test = parts.test.sample(int(p["n_test"]), int(p["split_seed"]))
    return demo_task(model, clean_and_attacked(test, standardise, p["ink"], rng), validation,
                     {"task": "typographic", "params": p, "n_captioned": len(captioned)})
