"""Examples of a demo task with a group name each, and the Task that attributes some and validates on others."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from coar.task import Task


@dataclass
class Labelled:
    """Model inputs (n, 1, H, W), int64 labels, a unique id and a group name per example."""

    inputs: torch.Tensor
    labels: torch.Tensor
    ids: list[str]
    group: list[str]

    @classmethod
    def of(cls, inputs: torch.Tensor, labels: np.ndarray, image_ids: np.ndarray, variant: str,
           group: str | list[str]) -> "Labelled":
        """One rendering `variant` of some digits; ids are "<load_digits index>|<variant>"."""
        names = [group] * len(labels) if isinstance(group, str) else list(group)
        return cls(inputs, torch.as_tensor(labels, dtype=torch.long), [f"{i}|{variant}" for i in image_ids], names)

    @staticmethod
    def concat(parts: list["Labelled"]) -> "Labelled":
        return Labelled(torch.cat([p.inputs for p in parts]), torch.cat([p.labels for p in parts]),
                        [i for p in parts for i in p.ids], [g for p in parts for g in p.group])

    def groups(self, unions: dict[str, tuple[str, ...]] | None = None) -> dict[str, list[int]]:
        """{name: positions} of every group, plus each union of groups named in `unions`."""
        named: dict[str, list[int]] = {}
        for position, name in enumerate(self.group):
            named.setdefault(name, []).append(position)
        for union, members in (unions or {}).items():
            named[union] = sorted(i for m in members for i in named.get(m, []))
        return {name: rows for name, rows in named.items() if rows}


def demo_task(model: nn.Module, attributed: Labelled, validation: Labelled, info: dict,
              unions: dict[str, tuple[str, ...]] | None = None) -> Task:
    """The Task attributing the margins of `attributed`, with `validation` to choose k on; both
    carry the same group names (and `unions` of them), so one selector picks from either."""
    return Task(model=model, inputs=attributed.inputs, labels=attributed.labels, output_fn="margin",
                example_ids=attributed.ids, groups=attributed.groups(unions),
                validation_inputs=validation.inputs, validation_labels=validation.labels,
                validation_groups=validation.groups(unions), info=info)
