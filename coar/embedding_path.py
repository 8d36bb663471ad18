"""Integrated-gradient paths for models that take token ids: interpolate the token embedding instead.

Conductance and internal influence integrate gradients along the straight path from a zero
input to the input. Token ids cannot be scaled, so for a model whose inputs are integers the
path runs on the output of its token-embedding module (the `nn.Embedding` that receives the
input ids): from all-zero token embeddings to the actual ones. Everything after that module
(position embeddings, layer norms, attention masks computed from the ids) runs as usual; a
model given `scale * embedding` is exactly the model with that module's output scaled.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def token_embedding(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """The single `nn.Embedding` of `model` whose input is the model's input ids (found by one forward pass).

    Refused, naming the candidates, when no embedding or more than one receives exactly those ids.
    """
    embeddings = {name: m for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
    seen: list[tuple[str, nn.Module]] = []

    def watch(name: str):
        def check(mod: nn.Module, args: tuple) -> None:
            ids = args[0]
            if ids.numel() == inputs.numel() and torch.equal(ids.reshape(-1).cpu(), inputs.reshape(-1).cpu()):
                seen.append((name, mod))
        return check

    if embeddings:  # without any, the model cannot take the ids: refuse below without running it
        handles = [m.register_forward_pre_hook(watch(name)) for name, m in embeddings.items()]
        try:
            with torch.no_grad():
                model(inputs)
        finally:
            for h in handles:
                h.remove()
    names = sorted({name for name, _ in seen})
    if len(names) != 1:
        embeddings = list(embeddings)
        raise ValueError(f"integer inputs: the integrated-gradient path runs on the output of the nn.Embedding that "
                         f"receives the input ids, but {len(names)} of the model's embeddings {embeddings} do "
                         f"({names}); these methods need exactly one")
    return seen[0][1]


@contextmanager
def scaled_output(module: nn.Module, scale: float) -> Iterator[None]:
    """Within the block, `module` outputs `scale` times what it would."""
    handle = module.register_forward_hook(lambda _m, _args, out: out * scale)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def replaced_output(module: nn.Module, values: torch.Tensor) -> Iterator[None]:
    """Within the block, `module` outputs `values` (reshaped to its output's shape; same number of elements)."""

    def replace(_m: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        if values.numel() != out.numel():
            raise ValueError(f"replacement of {values.numel()} values for an output of shape {tuple(out.shape)}")
        return values.reshape(out.shape).to(out.dtype)

    handle = module.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def embedded(model: nn.Module, module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """`module`'s output on `inputs`, flattened to one row per example: (len(inputs), values)."""
    out: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _args, o: out.append(o.detach()))
    try:
        model(inputs)
    finally:
        handle.remove()
    return out[0].reshape(len(inputs), -1)
