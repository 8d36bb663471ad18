"""Which components an edit ablates: the published Welch-t prefix, or a set verified candidate by candidate.

Both walk one ranking of the candidates (coar.edit.planning.rank of the Welch t-statistics)
and return a *path*: the components in the order they are added, with the validation outputs
after each prefix of it. The edit then takes the first k of the path (coar.edit.planning.choose_k).

- `prefix_path`: the published method. The path is the ranking itself; one pass per k.
- `verified_path`: each candidate is first judged by the two predictions the attributions give
  (its predicted change of the target outputs must go the edit's way, and the predicted
  reference accuracy of the set with it must stay within the tolerance), then verified on the
  validation examples together with the set chosen so far: it joins the set when the realised
  reference accuracy stays within the tolerance and the target's mean output moves the edit's
  way. A candidate that fails is skipped and the next ones are tried, where the prefix would
  have stopped (or, worse, taken it); once the ranking is done, the refused candidates are
  looked at once more against the set as it then is. Candidates are verified `batch` at a
  time, each batch one call of `evaluate` (one `run_masked` call).

`evaluate(masks)` returns the validation outputs (masks x examples) of the model with each
row's components ablated; `target` and `reference` index its examples, and `sign` is +1 when
the edit raises the target output, -1 when it lowers it. A target example counts as a success
when `sign * output > 0` (e.g. a negative correct-class margin for "lower": forgotten), a
reference example as accurate when its output is positive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

Evaluate = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Tried:
    """One candidate the verified selection looked at, and why it joined the set or not."""

    index: int
    accepted: bool
    reason: str


@dataclass
class Path:
    """The components in the order they joined (`order`), the validation outputs after each
    prefix (`outputs[k]`: the first k ablated; row 0 is the unedited model), and for the
    verified selection every candidate looked at."""

    order: list[int]
    outputs: np.ndarray
    tried: list[Tried] = field(default_factory=list)

    @property
    def ks(self) -> list[int]:
        return list(range(len(self.order) + 1))


def success(outputs: np.ndarray, sign: float) -> np.ndarray:
    """Fraction of examples (last axis) the edit has moved to the wanted side of zero."""
    return (sign * np.asarray(outputs) > 0).mean(-1)


def accuracy(outputs: np.ndarray) -> np.ndarray:
    """Fraction of examples (last axis) with a positive output (e.g. a correct-class margin)."""
    return (np.asarray(outputs) > 0).mean(-1)


def prefix_masks(order: np.ndarray | list[int], ks: list[int], n_components: int) -> np.ndarray:
    """(len(ks) x N) bool: row j ablates the first ks[j] components of `order`."""
    masks = np.zeros((len(ks), n_components), dtype=bool)
    for row, k in enumerate(ks):
        masks[row, np.asarray(order[:k], dtype=np.int64)] = True
    return masks


def prefix_path(order: np.ndarray, k: int, n_components: int, evaluate: Evaluate) -> Path:
    """The published method's path: the first k of the ranking, every prefix evaluated in one call."""
    chosen = [int(i) for i in order[:k]]
    return Path(chosen, evaluate(prefix_masks(chosen, list(range(k + 1)), n_components)))


class Predictions:
    """What the attributions predict of a set, on the run's attributed examples: the change of each
    example's output is the sum of the set's attributions (encoding 1 = ablated), or, when the run
    has a surrogate beyond linear COAR (coar.solver.surrogate, `predict(masks)`), the surrogate's
    predicted output with the set ablated minus with nothing ablated."""

    def __init__(self, weight: np.ndarray, base: np.ndarray, target: np.ndarray, reference: np.ndarray,
                 surrogate: Surrogate | None = None) -> None:
        self.weight, self.base, self.target, self.reference = weight, base, target, reference
        self.surrogate = surrogate
        if surrogate is not None:
            self._nothing = surrogate.predict(np.zeros((1, weight.shape[1])))[0]

    def change(self, masks: np.ndarray) -> np.ndarray:
        """Predicted output change (masks x examples) of every attributed example."""
        masks = np.asarray(masks, dtype=np.float64)
        if self.surrogate is None:
            return masks @ self.weight.T
        return self.surrogate.predict(masks) - self._nothing

    def target_change(self, component: int, sign: float) -> float:
        """The predicted mean change of the target outputs from ablating `component`, signed so
        that a positive value moves the edit's way."""
        if self.surrogate is None:
            return float(sign * self.weight[self.target, component].mean())
        mask = np.zeros((1, self.weight.shape[1]))  # one candidate at a time: never an N x N mask matrix
        mask[0, component] = 1
        return float(sign * self.change(mask)[0, self.target].mean())

    def reference_accuracy(self, components: list[int]) -> float:
        """The predicted reference accuracy with `components` ablated."""
        mask = np.zeros((1, self.weight.shape[1]))
        mask[0, components] = 1
        return float(accuracy(self.base[self.reference] + self.change(mask)[0, self.reference]))


class Surrogate(Protocol):
    """A model of the ablated outputs beyond linear COAR: outputs (masks x examples) of masks."""

    def predict(self, masks: np.ndarray) -> np.ndarray: ...


def verified_path(order: np.ndarray, n_components: int, evaluate: Evaluate, *, target: np.ndarray,
                  reference: np.ndarray, sign: float, tolerance: float, k_max: int, goal: float | None = None,
                  predictions: Predictions | None = None, batch: int = 8) -> Path:
    """Grow the set candidate by candidate in ranking order (module doc) until it holds `k_max`
    components, its validation target success reaches `goal` (without one: every target example
    moved, which nothing can better), or every candidate has been looked at twice: once the
    ranking is done, the candidates it refused are looked at once more, in the order they were
    refused, against the set as it then is (ablating others changes what one does), but for
    those predicted on their own to move the target the wrong way."""
    base = evaluate(np.zeros((1, n_components), dtype=bool))[0]
    floor = accuracy(base[reference]) - tolerance - 1e-12
    predicted_floor = (predictions.reference_accuracy([]) - tolerance - 1e-12) if predictions is not None else None
    chosen: list[int] = []
    outputs = [base]
    tried: list[Tried] = []
    queue = [int(i) for i in order]
    first_look = len(queue)  # queue positions from here on are second looks
    position = 0
    while len(chosen) < k_max:
        if position == len(queue) == first_look:
            # The second look. A candidate's own predicted change does not depend on the set, so one
            # predicted to move the target the wrong way is not looked at again.
            queue += [t.index for t in tried
                      if not t.accepted and (predictions is None or predictions.target_change(t.index, sign) > 0)]
        if position == len(queue) or success(outputs[-1][target], sign) >= (1.0 if goal is None else goal):
            break
        batch_tried: list[tuple[int, Tried]] = []  # (queue position, verdict) of this batch
        candidates: list[tuple[int, int]] = []  # (queue position, component) to verify
        while len(candidates) < batch and position < len(queue):
            candidate = queue[position]
            refusal = _predicted_refusal(predictions, chosen, candidate, sign, predicted_floor)
            if refusal:
                batch_tried.append((position, Tried(candidate, False, _looked(position, first_look, refusal))))
            else:
                candidates.append((position, candidate))
            position += 1
        if candidates:
            accepted = _verify(candidates, chosen, outputs[-1], evaluate(_with_each(chosen, candidates, n_components)),
                               target, reference, sign, floor, first_look, batch_tried)
            if accepted is not None:
                at, candidate, realised = accepted
                chosen.append(candidate)
                outputs.append(realised)
                batch_tried = [(p, t) for p, t in batch_tried if p <= at]  # the later ones are judged again
                position = at + 1
        tried.extend(t for _, t in sorted(batch_tried, key=lambda pair: pair[0]))
    return Path(chosen, np.stack(outputs), tried)


def _with_each(chosen: list[int], candidates: list[tuple[int, int]], n_components: int) -> np.ndarray:
    """One mask row per candidate: the chosen set plus that candidate."""
    masks = np.zeros((len(candidates), n_components), dtype=bool)
    masks[:, chosen] = True
    masks[np.arange(len(candidates)), [c for _, c in candidates]] = True
    return masks


def _verify(candidates: list[tuple[int, int]], chosen: list[int], current: np.ndarray, realised: np.ndarray,
            target: np.ndarray, reference: np.ndarray, sign: float, floor: float, first_look: int,
            verdicts: list[tuple[int, Tried]]) -> tuple[int, int, np.ndarray] | None:
    """The first candidate (queue position, component, outputs) whose realised outputs keep the
    reference within its floor and move the target the edit's way; a verdict appended for each
    candidate judged up to it."""
    before = float(np.mean(sign * current[target]))
    for (at, candidate), outputs in zip(candidates, realised):
        reference_accuracy = float(accuracy(outputs[reference]))
        moved = float(np.mean(sign * outputs[target])) - before
        if reference_accuracy < floor:
            accepted, reason = False, (f"validation reference accuracy would fall to {reference_accuracy:.3f} "
                                       f"(floor {floor + 1e-12:.3f})")
        elif moved <= 0:
            accepted, reason = False, f"the validation target's mean output moves the wrong way (by {abs(moved):.3g})"
        else:
            accepted, reason = True, (f"the validation target's mean output {_way(sign)} by {moved:.3g}; reference "
                                      f"accuracy {reference_accuracy:.3f}")
        verdicts.append((at, Tried(candidate, accepted, _looked(at, first_look, reason))))
        if accepted:
            return at, candidate, outputs
    return None


def _looked(position: int, first_look: int, reason: str) -> str:
    """A verdict's reason, marked when it comes from the second look at a refused candidate."""
    return reason if position < first_look else f"second look: {reason}"


def _way(sign: float) -> str:
    return "rises" if sign > 0 else "falls"


def _predicted_refusal(predictions: Predictions | None, chosen: list[int], candidate: int, sign: float,
                       floor: float | None) -> str:
    """Why the attributions' predictions rule `candidate` out before any pass ("" when they do not)."""
    if predictions is None:
        return ""
    change = predictions.target_change(candidate, sign)
    if change <= 0:
        return f"predicted to move the target's mean output the wrong way (by {abs(change):.3g})"
    predicted = predictions.reference_accuracy(chosen + [candidate])
    if predicted < floor:
        return f"predicted reference accuracy {predicted:.3f} (floor {floor + 1e-12:.3f})"
    return ""
