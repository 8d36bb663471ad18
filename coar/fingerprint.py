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
