"""Fingerprints: short hashes that tie every file to the model and examples that made it."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def _update(h: "hashlib._Hash", t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def tensors_fingerprint(*tensors: torch.Tensor) -> str:
    """sha256 over the dtypes, shapes and bytes of `tensors`."""
    h = hashlib.sha256()
    for t in tensors:
        _update(h, t)
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's state dict (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        _update(h, t)
    return h.hexdigest()


class ExamplesHasher:
    """The examples fingerprint, accumulated batch by batch.

    sha256 over the per-example dtype and shape of inputs and labels, the number of examples,
    and the digests of all input bytes and all label bytes in example order. Batch boundaries
    do not change it, so a tensor task and a Dataset holding the same examples hash alike.
    """

    def __init__(self) -> None:
        self._inputs, self._labels = hashlib.sha256(), hashlib.sha256()
        self._kind: tuple[str, str] | None = None
        self._n = 0

    def update(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: `inputs` and `labels` with the same leading (example) dimension."""
        if len(inputs) != len(labels):
            raise ValueError(f"a batch holds {len(inputs)} inputs but {len(labels)} labels")
        kind = tuple(f"{t.dtype}{tuple(t.shape[1:])}" for t in (inputs, labels))
        if self._kind is None:
            self._kind = kind
        elif kind != self._kind:
            raise ValueError(f"examples from {self._n} on are {kind}, earlier ones {self._kind}: "
                             "every example must have the same dtype and shape")
        for h, t in ((self._inputs, inputs), (self._labels, labels)):
            t = t.detach().cpu().contiguous()
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        self._n += len(inputs)

    def hexdigest(self) -> str:
        h = hashlib.sha256(f"{self._kind}{self._n}".encode())
        h.update(self._inputs.digest() + self._labels.digest())
        return h.hexdigest()
