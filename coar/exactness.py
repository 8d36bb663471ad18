"""Exact or refused: where each hooked tensor holds the batch, and a dry pass before any work.

Batched ablation is exact only when every masker is reached, sees the batch where it masks it,
and the weights it stands for belong to its module alone. Three checks establish that on a
couple of examples, before any collection:

- `probe_layout`: two forward passes (2 and 3 rows) with recording hooks. A group never reached
  is unreachable (a fused fast path, or a parent using its weight directly); the axis of its
  tensor that changes from 2 to 3 while every other axis stays is its batch axis (1 for
  sequence-first activations). An axis that grows from 2c to 3c holds c rows per example (a
  model that folds, e.g., three sentences of an example into its batch); whether those rows are
  grouped by example, as the masks need, is checked by a batched pass (`fold_problems`). No
  such axis, or disagreeing calls: refused.
- `coar.ablation.tied_weights`: a group whose weight Parameter another module also uses.
- `dry_pass`: the above, then, for each remaining group, one batched pass ablating all its units
  (beside an unablated copy of the batch) is compared with zeroing its weights in place
  (restored after) and with the plain output: whatever else makes them differ is caught too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from coar.ablation import Ablation, BoundGroup, bind, install_maskers, remove_all, tied_weights, unreached_cause
from coar.components import ComponentSet

log = logging.getLogger("coar")

OnProblem = Literal["error", "drop"]
PROBE_ROWS = (2, 3)
TOLERANCE = 1e-4
"""Largest relative difference (max abs, over the output's max abs) between batched and zeroed-weight outputs."""


@dataclass
class Layout:
    """Per component group: the axis of its masked tensor that holds the batch, how many rows of
    that axis each example has (`folds`, 1 unless the model folds several rows per example into
    its batch), and the groups that cannot be ablated exactly (index -> reason)."""

    batch_dims: list[int]
    folds: list[int]
    problems: dict[int, str]


def _rows(inputs: torch.Tensor, rows: int) -> torch.Tensor:
    """`rows` rows cycled from the first two examples (one, if there is only one)."""
    if len(inputs) == 0:
        raise ValueError("the exactness checks need at least one example input")
    index = torch.arange(rows) % min(2, len(inputs))
    return inputs[index.to(inputs.device)]


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def probe_layout(model: nn.Module, components: ComponentSet, inputs: torch.Tensor,
                 bound: list[BoundGroup] | None = None) -> Layout:
    """Find each group's batch axis and the groups never reached, from two small forward passes."""
    if model.training:
        raise ValueError("the exactness checks need the model in eval mode (call model.eval())")
    bound = bound if bound is not None else bind(model, components, allow_tied=True)
    seen: list[list[list[tuple[tuple[int, ...], int]]]] = []
    for rows in PROBE_ROWS:
        calls: list[list[tuple[tuple[int, ...], int]]] = [[] for _ in bound]

        def recorder(i: int):
            def record(x: torch.Tensor, dim: int, units: slice) -> None:
                calls[i].append((tuple(x.shape), dim % x.dim()))

            return record

        handles = install_maskers(bound, recorder)
        try:
            model(_rows(inputs, rows).to(_device(model)))
        finally:
            remove_all(handles)
        seen.append(calls)
    batch_dims, folds, problems = [0] * len(bound), [1] * len(bound), {}
    for i, b in enumerate(bound):
        small, large = seen[0][i], seen[1][i]
        if not small:
            problems[i] = "never called in a forward pass: " + unreached_cause(model, b.group.module)
            continue
        axes = _batch_axes(small, large)
        if len(axes) == 1:
            batch_dims[i], folds[i] = axes.pop()
        else:
            problems[i] = (
                f"cannot tell which axis of its tensor holds the batch (shapes {[s for s, _ in small]} at "
                f"{PROBE_ROWS[0]} rows, {[s for s, _ in large]} at {PROBE_ROWS[1]}): the batch is folded into another "
                "axis, or the module's calls disagree"
            )
    return Layout(batch_dims, folds, problems)


def _batch_axes(small: list, large: list) -> set[tuple[int, int]]:
    """(axis, rows per example) that hold the batch in every call: the only axis that grows, from
    2c rows to 3c."""
    if len(small) != len(large):
        return set()
    axes: set[tuple[int, int]] | None = None
    for (a, unit_a), (b, unit_b) in zip(small, large):
        if len(a) != len(b) or unit_a != unit_b:
            return set()
        changed = [j for j in range(len(a)) if a[j] != b[j]]
        ok = set()
        if len(changed) == 1 and changed[0] != unit_a:
            j = changed[0]
            fold = a[j] // PROBE_ROWS[0]
            if fold >= 1 and (a[j], b[j]) == (fold * PROBE_ROWS[0], fold * PROBE_ROWS[1]):
                ok = {(j, fold)}
        axes = ok if axes is None else axes & ok
    return axes or set()


def _first_tensor(out) -> torch.Tensor:
    """The model's main output: itself if a tensor, else its first entry (e.g. logits)."""
    while not isinstance(out, torch.Tensor):
        out = out[0]
    return out.float()


@torch.no_grad()
def _zeroed_output(model: nn.Module, b: BoundGroup, x: torch.Tensor) -> torch.Tensor:
    """The model's output with every unit of `b` zeroed for real; the weights are restored after."""
    saved = [(p, p.detach().clone()) for p in b.owner.parameters()]
    try:
        b.adapter.zero_weights_(b.owner, b.site, torch.arange(b.group.size, device=x.device))
        return _first_tensor(model(x))
    finally:
        for p, value in saved:
            p.copy_(value)


@torch.no_grad()
def _mismatches(model: nn.Module, components: ComponentSet, batch_dims: list[int], folds: list[int], x: torch.Tensor,
                only: list[int] | None = None, per_pass: int = 8) -> dict[int, str]:
    """Groups (all, or `only` these) whose batched all-units ablation differs from zeroing their
    weights, with the error. Each pass also holds an unablated copy of the batch, which must give
    the plain output: with k >= 2 masks per pass, masks landing on the wrong rows are caught."""
    bound = bind(model, components)
    groups = list(range(len(bound))) if only is None else list(only)
    wanted = {i: _zeroed_output(model, bound[i], x).reshape(-1) for i in groups}  # before any hook is installed
    plain = _first_tensor(model(x)).reshape(-1)
    found = {}
    with Ablation(model, components, mode="weight", batch_dims=batch_dims, folds=folds) as ablation:
        for g0 in range(0, len(groups), per_pass):
            chunk = groups[g0 : g0 + per_pass]
            masks = torch.zeros(len(chunk) + 1, len(components), dtype=torch.bool)  # last row: nothing ablated
            for row, i in enumerate(chunk):
                masks[row, bound[i].group.start : bound[i].group.stop] = True
            ablation.set_masks(masks)
            got = _first_tensor(model(x.repeat(len(masks), *([1] * (x.dim() - 1))))).reshape(len(masks), -1)
            ablation.check_reached()
            unablated = _relative_error(got[-1], plain)
            for row, i in enumerate(chunk):
                error = _relative_error(got[row], wanted[i])
                if folds[i] > 1 and not max(error, unablated) <= TOLERANCE:
                    found[i] = (
                        f"its batch axis holds {folds[i]} rows per example, not grouped by example (batched ablation "
                        f"differs from zeroing its weights, relative error {max(error, unablated):.2g}): masks would "
                        "land on other examples' rows"
                    )
                elif not error <= TOLERANCE:
                    found[i] = (
                        f"batched ablation of all its units differs from zeroing its weights (relative error {error:.2g}): "
                        "its weight is likely also used outside the module's own forward"
                    )
    return found


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp(min=1e-12))


def fold_problems(model: nn.Module, components: ComponentSet, layout: Layout, x: torch.Tensor,
                  used: list[int]) -> dict[int, str]:
    """For the `used` groups whose batch axis folds several rows per example: those whose rows are
    not grouped by example (one batched pass per 8 such groups, on the rows of `x`)."""
    folded = [i for i in used if layout.folds[i] > 1 and i not in layout.problems]
    if not folded:
        return {}
    return _mismatches(model, components, layout.batch_dims, layout.folds, x, only=folded)


def dry_pass(model: nn.Module, components: ComponentSet, inputs: torch.Tensor) -> dict[tuple[str, str], str]:
    """Every group that batched ablation cannot reproduce exactly, (module, kind) -> reason.

    One or two examples of `inputs` suffice; costs about (groups + 4) single-example passes.
    """
    bound = bind(model, components, allow_tied=True)
    problems = dict(tied_weights(model, bound))
    layout = probe_layout(model, components, inputs, bound)
    problems.update({i: r for i, r in layout.problems.items() if i not in problems})
    kept = [i for i in range(len(bound)) if i not in problems]
    if kept:
        clean = components.without((bound[i].group.module, bound[i].group.kind) for i in problems)
        found = _mismatches(model, clean, [layout.batch_dims[i] for i in kept], [layout.folds[i] for i in kept],
                            _rows(inputs, 1).to(_device(model)))
        problems.update({kept[j]: r for j, r in found.items()})
    return {(bound[i].group.module, bound[i].group.kind): r for i, r in sorted(problems.items())}


def check_components(model: nn.Module, components: ComponentSet, inputs: torch.Tensor,
                     on_problem: OnProblem = "error") -> tuple[ComponentSet, dict[tuple[str, str], str]]:
    """Run the dry pass; refuse (naming each problem group) or drop those groups with a warning.

    Returns the components to use and the problems found (empty when all are exact).
    """
    if on_problem not in ("error", "drop"):
        raise ValueError(f"on_problem must be 'error' or 'drop', got {on_problem!r}")
    problems = dry_pass(model, components, inputs)
    if not problems:
        return components, problems
    listing = "\n".join(f"  - {module} ({kind}): {reason}" for (module, kind), reason in problems.items())
    if on_problem == "error":
        raise ValueError(
            f"{len(problems)} component group(s) cannot be ablated exactly:\n{listing}\n"
            "exclude them (components.exclude) or drop them automatically (components.unreachable: drop)"
        )
    log.warning("dropping %d component group(s) that cannot be ablated exactly:\n%s", len(problems), listing)
    return components.without(problems), problems
