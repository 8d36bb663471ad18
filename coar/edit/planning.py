"""COAR-Edit: change what a model does on target examples, and keep it elsewhere, by ablating a few components.

Given attributions (encoding 1 = ablated, so `w[z, i]` is the predicted change of example z's
output when component i is ablated) of target examples T and reference examples R:

1. `welch_scores`: one Welch t-statistic per component, how much more ablating it moves the
   target outputs than the reference outputs.
2. `rank`: "fix" raises the target's output (for the correct-class margin: repairs errors), so
   the most positive scores come first; "forget" and "induce" lower it, most negative first.
3. walk that order on validation examples (coar.edit.selection: the published prefix, or each
   candidate verified before it joins), and `choose_k` by a stated rule from the validation
   metrics per k (coar.edit.steps.apply).
4. `apply_edit`: make the ablation permanent on a copy of the model.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from coar.ablation import Mode, ablate_weights_, unit_fills
from coar.components import ComponentSet

Direction = Literal["fix", "forget", "induce"]
DIRECTIONS = ("fix", "forget", "induce")


def welch_scores(target: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Welch t-statistic per component: (mean_T w - mean_R w) / sqrt(var_T w / |T| + var_R w / |R|).

    `target` (|T| x N) and `reference` (|R| x N) are attributions; variances are population
    variances, so a single target example contributes variance 0. A component whose
    attributions are all equal (e.g. one never ablated in the masks) has no spread and scores 0.
    """
    t, r = np.atleast_2d(np.asarray(target, np.float64)), np.atleast_2d(np.asarray(reference, np.float64))
    if t.ndim != 2 or r.ndim != 2 or t.shape[1] != r.shape[1] or len(t) == 0 or len(r) == 0:
        raise ValueError(f"target {t.shape} and reference {r.shape} must be non-empty (examples x N) with the same N")
    difference = t.mean(0) - r.mean(0)
    spread = np.sqrt(t.var(0) / len(t) + r.var(0) / len(r))
    return np.divide(difference, spread, out=np.zeros_like(difference), where=spread > 0)


def rank(scores: np.ndarray, direction: Direction) -> np.ndarray:
    """Component indices in the order they are ablated: "fix" highest score first, else lowest first."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown edit direction {direction!r}; choose from {list(DIRECTIONS)}")
    scores = np.asarray(scores, np.float64)
    return np.argsort(-scores if direction == "fix" else scores, kind="stable")


@dataclass(frozen=True)
class Choice:
    """The chosen k (ks[index]) and which branch of the rule chose it."""

    k: int
    index: int
    rule: str


def choose_k(ks: Sequence[int], target: np.ndarray, reference: np.ndarray, *, tolerance: float,
             goal: float | None = None) -> Choice:
    """Pick k from validation metrics per k (ks ascending, ks[0] = 0 = the unedited model).

    A k is feasible when its reference metric is at least the unedited one minus `tolerance`.
    With a `goal`: the smallest feasible k whose target metric reaches it. Otherwise (no goal,
    or none reaches it): the feasible k with the best target metric, the smallest on ties;
    that is k = 0 when no feasible edit improves the target.
    """
    ks, target, reference = list(ks), np.asarray(target, np.float64), np.asarray(reference, np.float64)
    if not ks or ks[0] != 0 or any(a >= b for a, b in zip(ks, ks[1:])):
        raise ValueError(f"ks must be strictly increasing and start at 0 (the unedited model), got {ks}")
    if target.shape != (len(ks),) or reference.shape != (len(ks),):
        raise ValueError("target and reference need one value per k")
    feasible = np.flatnonzero(reference >= reference[0] - tolerance)  # always holds index 0
    if goal is not None:
        reached = feasible[target[feasible] >= goal]
        if len(reached):
            return Choice(ks[reached[0]], int(reached[0]), "smallest k reaching the goal")
    best = feasible[np.argmax(target[feasible])]  # argmax returns the first, i.e. smallest, k
    rule = "best target metric within the reference tolerance" if best else "no feasible k improves the target"
    return Choice(ks[best], int(best), rule)


@torch.no_grad()
def apply_edit(model: nn.Module, components: ComponentSet, ablated: Sequence[int], mode: Mode = "weight",
               fills: list[torch.Tensor] | None = None, reference_inputs: torch.Tensor | None = None) -> nn.Module:
    """A copy of `model` with components `ablated` removed for good; `model` is left unchanged.

    "weight" zeroes their weights (the published ablation). "zero" and "mean" also set the
    unit's bias to 0 or to its mean output (from `fills`, or computed on `reference_inputs`),
    so the unit outputs that constant: this needs a Conv/Linear unit whose module has a bias.
    """
    edited = copy.deepcopy(model)
    mask = torch.zeros(len(components), dtype=torch.bool)
    mask[torch.as_tensor(list(ablated), dtype=torch.long)] = True
    if mode != "weight":
        fills = fills if fills is not None else unit_fills(model, components, mode, reference_inputs)
        for group, fill in zip(components.groups, fills):
            units = mask[group.start : group.stop].nonzero().flatten()
            if not len(units):
                continue
            bias = getattr(edited.get_submodule(group.module), "bias", None)
            if group.kind not in ("conv", "linear") or not isinstance(bias, torch.Tensor):
                raise ValueError(f"a permanent {mode!r} edit sets the bias of the ablated units, and {group.kind} units "
                                 f"of {group.module!r} have none; use mode='weight'")
            bias[units] = fill[units].to(bias)
    return ablate_weights_(edited, components, mask)


def by_layer(components: ComponentSet, ablated: Sequence[int]) -> dict[str, int]:
    """How many of the `ablated` components each module holds, in the model's module order."""
    counts = Counter(components.locate(int(i))[0] for i in ablated)
    return {g.module: counts[g.module] for g in components.groups if counts[g.module]}


def describe(components: ComponentSet, ablated: Sequence[int], scores: np.ndarray | None = None) -> list[dict]:
    """One record (index, module, unit, kind[, score]) per ablated component, in ablation order."""
    rows = []
    for i in ablated:
        module, unit, kind = components.locate(int(i))
        row = {"index": int(i), "module": module, "unit": unit, "kind": kind}
        if scores is not None:
            row["score"] = float(scores[int(i)])
        rows.append(row)
    return rows
