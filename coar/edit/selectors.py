"""Which examples an edit's `target` and `reference` selectors pick, among the run's attributed
examples (plan) or its validation examples (apply).

A selector is a mapping of one or more keys, all of which must hold (coar.constants.EDIT_SELECTOR_KEYS):
`label: 3` (the example's label), `ids: FILE` (a text file of example ids, one per line;
validation examples are named `validation:<position>`), `misclassified: true` (the unedited
model's output, e.g. the correct-class margin, is negative; `false`: not negative), `group: NAME`
(a group the task gives, coar.task.Task.groups) and, for the reference only, `rest: true`
(every example the target does not pick).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coar.edit.spec import EditConfigError, EditSpec


@dataclass
class Pool:
    """The examples selectors choose from, and what they may look at."""

    what: str  # "the run's examples" or "the validation examples", for messages
    ids: list[str]
    labels: np.ndarray
    groups: dict[str, list[int]]
    outputs: np.ndarray | None = None  # the unedited model's outputs, needed by `misclassified` only


def validation_ids(n: int) -> list[str]:
    """The ids an `ids` file uses for the validation examples."""
    return [f"validation:{i}" for i in range(n)]


def needs_outputs(spec: EditSpec) -> bool:
    """Whether the selectors need the unedited model's outputs (a forward pass)."""
    return "misclassified" in spec.target or "misclassified" in spec.reference


def _select(spec: EditSpec, key: str, selector: dict, pool: Pool) -> np.ndarray:
    chosen = np.ones(len(pool.ids), dtype=bool)
    for name, value in selector.items():
        if name == "label":
            if pool.labels.ndim != 1:
                raise EditConfigError(f"edit {spec.name!r}, key '{key}.label': the task's labels are not one per "
                                      f"example (shape {pool.labels.shape}); select by ids or group")
            chosen &= pool.labels == value
        elif name == "ids":
            lines = Path(value).read_text(encoding="utf-8").splitlines()
            chosen &= np.isin(np.asarray(pool.ids, dtype=object), [s.strip() for s in lines if s.strip()])
        elif name == "group":
            if value not in pool.groups:
                raise EditConfigError(f"edit {spec.name!r}, key '{key}.group': unknown group {value!r}; "
                                      f"{pool.what} have the groups {sorted(pool.groups)}")
            in_group = np.zeros(len(pool.ids), dtype=bool)
            in_group[pool.groups[value]] = True
            chosen &= in_group
        elif name == "misclassified":
            if pool.outputs is None:
                raise ValueError("the misclassified selector needs the unedited outputs")
            chosen &= (pool.outputs < 0) == value
    return np.flatnonzero(chosen)


def _refuse_empty(spec: EditSpec, key: str, rows: np.ndarray, selector: dict, pool: Pool) -> None:
    if not len(rows):
        raise EditConfigError(f"edit {spec.name!r}, key {key!r}: {selector} matches none of {pool.what} "
                              f"({len(pool.ids)})")


def select_reference(spec: EditSpec, pool: Pool) -> np.ndarray:
    """Positions of the reference examples in `pool`, for an edit whose targets lie elsewhere (a
    per-example edit's targets are run examples; its reference is checked on validation):
    `rest: true` is every example the target does not pick. Refused when empty."""
    if spec.reference.get("rest"):
        reference = np.setdiff1d(np.arange(len(pool.ids)), _select(spec, "target", spec.target, pool))
    else:
        reference = _select(spec, "reference", spec.reference, pool)
    _refuse_empty(spec, "reference", reference, spec.reference, pool)
    return reference


def select(spec: EditSpec, pool: Pool) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the target and the reference examples in `pool`; refused, naming the edit and
    the key, when either is empty or they overlap."""
    target = _select(spec, "target", spec.target, pool)
    if spec.reference.get("rest"):
        reference = np.setdiff1d(np.arange(len(pool.ids)), target)
    else:
        reference = _select(spec, "reference", spec.reference, pool)
    for key, rows, selector in (("target", target, spec.target), ("reference", reference, spec.reference)):
        _refuse_empty(spec, key, rows, selector, pool)
    overlap = np.intersect1d(target, reference)
    if len(overlap):
        raise EditConfigError(f"edit {spec.name!r}, keys 'target' and 'reference': {len(overlap)} of {pool.what} "
                              f"are selected by both (e.g. {pool.ids[overlap[0]]!r}); make them disjoint")
    return target, reference
