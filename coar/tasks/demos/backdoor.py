"""Backdoor: a digits model taught to call any digit carrying a small trigger `label`.

A 3x3 checkerboard trigger in the bottom-right corner of a 12x12 canvas is stamped on a share
`poison` of the training images, whose labels are set to `label`. The attributed examples are
the test digits, each once clean (group `clean`) and, if its class is not `label`, once with the
trigger and its correct label (group `triggered`); the validation digits come the same two ways.
The edit (config/edit-demos/backdoor.yaml) raises the triggered digits' margins, keeping the clean ones.
"""

from __future__ import annotations

import numpy as np

from coar.task import Task
from coar.tasks.demos.images import Part, Standardiser, on_canvas, split_digits, with_trigger
from coar.tasks.demos.labelled import Labelled, demo_task
from coar.tasks.demos.training import train_on_images
from coar.tasks.params import with_defaults

DEFAULTS = {
    "seed": 0,  # model initialisation, training order and which training images are poisoned
    "split_seed": 0,  # which digits are train, validation and test images
    "width": 2.0,  # 704 conv filters: at width 1 every filter the backdoor uses also costs clean accuracy
    "epochs": 30,
    "n_test": 100,  # test digits attributed (chosen by split_seed); each appears in two variants
    "poison": 0.05,  # share of training images given the trigger and the label `label`
    "label": 0,
}


def clean_and_triggered(part: Part, standardise: Standardiser, label: int) -> Labelled:
    """Every digit clean, and every digit of another class than `label` triggered (correct labels)."""
    others = part.take(np.flatnonzero(part.labels != label))
    return Labelled.concat([
        Labelled.of(standardise(on_canvas(part.images)), part.labels, part.ids, "clean", "clean"),
        Labelled.of(standardise(with_trigger(on_canvas(others.images))), others.labels, others.ids, "triggered",
                    "triggered")])


def task(params: dict) -> Task:
    """Train the backdoored model; attribute the test digits, clean and triggered."""
    p = with_defaults(params, DEFAULTS, "backdoor task")
    parts = split_digits(int(p["split_seed"]))
    rng = np.random.default_rng(int(p["seed"]))
    labels = parts.train.labels.copy()
    poisoned = rng.choice(len(labels), int(round(p["poison"] * len(labels))), replace=False)
    labels[poisoned] = p["label"]
    model, standardise = train_on_images(with_trigger(on_canvas(parts.train.images), poisoned), labels,
                                         width=float(p["width"]), epochs=int(p["epochs"]), seed=int(p["seed"]))
    test = parts.test.sample(int(p["n_test"]), int(p["split_seed"]))
    return demo_task(model, clean_and_triggered(test, standardise, p["label"]),
                     clean_and_triggered(parts.val, standardise, p["label"]),
                     {"task": "backdoor", "params": p, "n_poisoned": len(poisoned)})
