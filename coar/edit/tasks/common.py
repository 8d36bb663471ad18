"""What the five editing tasks share: examples, training, attributions, and running one edit.

A task builds an `EditSetup`: a trained model, its components, one or more `EditProblem`s and
a test set. An `EditProblem` holds everything an edit may look at (the target and reference
examples it attributes, the validation examples k is chosen on, and how to score them); the
test set lives apart in the setup and is only read after the edit is fixed, to report it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from coar import solver
from coar.components import ComponentSet
from coar.edit.planning import Direction, EditPlan, apply_edit, by_layer, describe, plan_edit
from coar.forward import run_masked
from coar.masks import sample_masks
from coar.outputs import margin
from coar.edit.tasks.images import Standardiser
from coar.tasks.digits import DigitsResNet, DigitsSplit, train
from coar.training import single_threaded

TaskMetrics = Callable[[np.ndarray, "Examples"], dict[str, np.ndarray]]
"""(margins K x n, examples) -> named metrics per row; row 0 is the unedited model."""

COMMON_DEFAULTS = {
    "seed": 0,  # model initialisation, training order, example choice and attribution masks
    "split_seed": 0,  # which digits are train, validation and test images
    "width": 1.0,  # channel multiplier of the DigitsResNet
    "epochs": 30,
    "kinds": "weight_rows",  # components: every conv filter and every neuron of the linear head (or ["conv"])
    "masks": 1000,  # ablation masks m for the attributions (OLS needs m > number of components)
    "alpha": 0.05,  # probability that a component is ablated in a mask
    "method": "ols",  # attribution estimator (coar.solver.fit)
    "k_max": 40,  # largest k of the sweep (k = 0, 1, ..., k_max)
    "max_batch": 512,  # rows (masks x examples) per forward pass
}


@dataclass
class Examples:
    """Standardised inputs, labels, a unique id and a task-defined integer group per example."""

    x: torch.Tensor
    y: torch.Tensor
    ids: list[str]
    group: np.ndarray

    def __post_init__(self) -> None:
        if not len(self.x) == len(self.y) == len(self.ids) == len(self.group):
            raise ValueError("x, y, ids and group must describe the same examples")

    def __len__(self) -> int:
        return len(self.y)

    def take(self, rows: np.ndarray) -> "Examples":
        rows = np.asarray(rows, dtype=np.int64)
        return Examples(self.x[rows], self.y[rows], [self.ids[i] for i in rows], self.group[rows])

    @classmethod
    def of(cls, inputs: torch.Tensor, labels: np.ndarray, image_ids: np.ndarray, variant: str,
           group: np.ndarray | int = 0) -> "Examples":
        """Examples of one rendering `variant` of some digits; ids are "<load_digits index>|<variant>"."""
        group = np.broadcast_to(np.asarray(group, dtype=np.int64), (len(labels),)).copy()
        return cls(inputs, torch.as_tensor(labels, dtype=torch.long), [f"{i}|{variant}" for i in image_ids], group)

    @staticmethod
    def concat(parts: list["Examples"]) -> "Examples":
        return Examples(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]),
                        [i for p in parts for i in p.ids], np.concatenate([p.group for p in parts]))


@dataclass
class EditProblem:
    """One edit and everything it may see: no test data."""

    name: str
    direction: Direction
    target: Examples
    reference: Examples
    validation: Examples
    metrics: TaskMetrics
    tolerance: float  # largest drop of the validation "reference" metric the edit may cost
    goal: float | None = None  # validation "target" level that is good enough (smallest k reaching it)


@dataclass
class EditSetup:
    """A task's model, components, edits to make, and the test set the results are reported on."""

    model: nn.Module
    components: ComponentSet
    problems: list[EditProblem]
    test: Examples
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen = {i.split("|")[0] for p in self.problems for e in (p.target, p.reference, p.validation) for i in e.ids}
        leaked = seen & {i.split("|")[0] for i in self.test.ids}
        if leaked:
            raise ValueError(f"test images also appear in the edit's own data: {sorted(leaked)[:5]}")


def train_model(inputs: torch.Tensor, labels: torch.Tensor, background: float, *, width: float, epochs: int,
                seed: int, num_classes: int = 10) -> DigitsResNet:
    """A DigitsResNet trained on (inputs, labels) with the default task's recipe, on one thread."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsResNet(width=width, num_classes=num_classes)
    split = DigitsSplit(inputs, labels, inputs[:0], labels[:0], np.zeros(0, dtype=np.int64), inputs[:0], labels[:0],
                        background)
    with single_threaded():
        train(model, split, epochs, seed)
    return model.eval()


def train_on_images(images: np.ndarray, labels: np.ndarray, p: dict, num_classes: int = 10) -> tuple[DigitsResNet, Standardiser]:
    """A model trained on [0, 1] `images` (standardised with their own statistics) with the task's
    width, epochs and seed; and that standardisation, which every later example goes through."""
    standardise = Standardiser.fit(images)
    model = train_model(standardise(images), torch.from_numpy(labels), standardise.background, width=p["width"],
                        epochs=p["epochs"], seed=p["seed"], num_classes=num_classes)
    return model, standardise


@torch.no_grad()
def margins_of(model: nn.Module, examples: Examples, batch: int = 1024) -> np.ndarray:
    """Correct-class margin of each example under a plain forward pass of `model`."""
    model.eval()
    return torch.cat([margin(model(examples.x[i : i + batch]), examples.y[i : i + batch])
                      for i in range(0, len(examples), batch)]).numpy()


def group_accuracy(margins: np.ndarray, group: np.ndarray, value: int) -> np.ndarray:
    """Accuracy (margin > 0) per row over the examples of one group; NaN where the group is empty."""
    members = group == value
    if not members.any():
        return np.full(len(margins), np.nan)
    return (margins[:, members] > 0).mean(axis=1)


CLEAN, PERTURBED = 0, 1
"""Group codes of tasks that pair clean digits with perturbed copies (trigger, misleading glyph)."""


def perturbed_vs_clean(margins: np.ndarray, examples: "Examples") -> dict[str, np.ndarray]:
    """target: accuracy on perturbed digits; reference: accuracy on clean digits."""
    return {"target": group_accuracy(margins, examples.group, PERTURBED),
            "reference": group_accuracy(margins, examples.group, CLEAN)}


def attribute(model: nn.Module, components: ComponentSet, examples: Examples, *, masks: int, alpha: float,
              seed: int, method: str, max_batch: int = 512) -> np.ndarray:
    """COAR attributions (n x N, 1 = ablated) of `examples`' correct-class margins."""
    x = sample_masks(seed, 0, masks, len(components), alpha, "train")
    y = run_masked(model, components, x, examples.x, examples.y, margin, max_batch=max_batch)
    return solver.fit((x, y), method, backend="numpy").weight


def _set_summary(before: np.ndarray, after: np.ndarray) -> dict:
    return {"n": int(len(before)), "accuracy_before": float((before > 0).mean()), "accuracy_after": float((after > 0).mean()),
            "mean_margin_before": float(before.mean()), "mean_margin_after": float(after.mean())}


def number(value: float) -> float | None:
    """A JSON-safe float: None for NaN (e.g. the accuracy of an empty group)."""
    return float(value) if np.isfinite(value) else None


@dataclass
class Outcome:
    """One edit made: its problem, plan (scores, order, validation curves, k), the edited model and its record."""

    problem: EditProblem
    plan: EditPlan
    edited: nn.Module
    record: dict


def run_setup(setup: EditSetup, *, masks: int, alpha: float, seed: int, method: str, k_max: int,
              max_batch: int = 512) -> list[Outcome]:
    """Attribute every problem's examples (one batched run), make each edit, then report it on the test set.

    Each record holds the chosen k and why, the ablated components (overall and by layer),
    accuracy and margin before/after on its target and reference examples, validation
    metrics per k, and test metrics before/after (the test set is read only here).
    """
    model, components = setup.model, setup.components
    unique: dict[str, int] = {}
    pool = []
    for p in setup.problems:
        for examples in (p.target, p.reference):
            new = [i for i, name in enumerate(examples.ids) if name not in unique]
            unique.update({examples.ids[i]: len(unique) + j for j, i in enumerate(new)})
            pool.append(examples.take(np.array(new, dtype=np.int64)))
    weights = attribute(model, components, Examples.concat(pool), masks=masks, alpha=alpha, seed=seed,
                        method=method, max_batch=max_batch)
    rows = lambda e: weights[[unique[i] for i in e.ids]]  # noqa: E731
    plans = [plan_edit(model, components, rows(p.target), rows(p.reference), p.direction,
                       (p.validation.x, p.validation.y), lambda m, p=p: p.metrics(m, p.validation),
                       range(k_max + 1), tolerance=p.tolerance, goal=p.goal, max_batch=max_batch)
             for p in setup.problems]
    # Every k is fixed: only now is the test set read.
    test_before = margins_of(model, setup.test)
    outcomes = []
    for p, plan in zip(setup.problems, plans):
        edited = apply_edit(model, components, plan.ablated)
        test = p.metrics(np.stack([test_before, margins_of(edited, setup.test)]), setup.test)
        record = {
            "name": p.name,
            "direction": p.direction,
            "k": plan.choice.k,
            "rule": plan.choice.rule,
            "fraction_ablated": plan.choice.k / len(components),
            "by_layer": by_layer(components, plan.ablated),
            "ablated": describe(components, plan.ablated, plan.scores),
            "target_set": _set_summary(margins_of(model, p.target), margins_of(edited, p.target)),
            "reference_set": _set_summary(margins_of(model, p.reference), margins_of(edited, p.reference)),
            "validation": {name: {"before": number(v[0]), "after": number(v[plan.choice.index])}
                           for name, v in plan.curves.items()},
            "test": {name: {"before": number(v[0]), "after": number(v[1])} for name, v in test.items()},
            "curves": {"k": plan.ks, **{name: [number(x) for x in v] for name, v in plan.curves.items()}},
        }
        outcomes.append(Outcome(p, plan, edited, record))
    return outcomes


def goal_check(value: float, comparison: str, threshold: float) -> dict:
    """An issue target: the measured value, the comparison it must pass, and whether it does."""
    met = value >= threshold if comparison == ">=" else value <= threshold
    return {"value": value, "comparison": comparison, "threshold": threshold, "met": bool(met)}


def model_info(model: DigitsResNet, width: float, num_classes: int, **accuracies: float) -> dict:
    """How to rebuild the model without coar (its class and arguments) and how accurate it is."""
    return {"class": f"{type(model).__module__}.{type(model).__qualname__}",
            "kwargs": {"width": width, "num_classes": num_classes}, **accuracies}
