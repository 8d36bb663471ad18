"""Adapters for Hugging Face transformers modules: GPT-2's Conv1D, and GPT-2, BERT and ViT heads.

Importing this module registers them with `coar.adapters.register_adapter` (once; `register()`
is idempotent), after which `coar.components.discover` and the ablation machinery handle these
models unchanged. Discovery imports it by itself when a model holds transformers modules, so
coar imports transformers only for models that already use it.

Units:
- `Conv1D` (GPT-2's linear layer, weight stored (in, out)): one "linear" unit per row of the
  stored weight, i.e. per input feature, as in the reference code (GPT-2 124M then has the
  published 64,512 rows). Zeroing row i equals setting input feature i to 0 for that layer
  alone, which is where the batched path masks it (a forward pre-hook on a copy of the input).
  On `mlp.c_proj` a unit is an MLP neuron: its post-activation output is removed.
- attention heads ("head"): each head's slice of the output projection's input, masked by a
  forward pre-hook on the projection, which works whatever attention implementation (eager,
  sdpa, ...) computes the heads. Zeroing a head equals zeroing that slice of the projection's
  input weights.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertAttention
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention
from transformers.models.vit.modeling_vit import ViTAttention
from transformers.pytorch_utils import Conv1D

from coar.adapters import Handle, Masker, Site, register_adapter

_ALL = slice(None)


def _input_dim(projection: nn.Module) -> int:
    """The weight dimension that indexes a projection's inputs: 0 for Conv1D (in, out), 1 for Linear."""
    if isinstance(projection, Conv1D):
        return 0
    if isinstance(projection, nn.Linear):
        return 1
    raise TypeError(f"coar: unsupported output projection {type(projection).__name__} (expected Conv1D or Linear)")


class Conv1DRowsAdapter:
    """GPT-2's `Conv1D`: one "linear" unit per row of its (in, out) weight, i.e. per input feature."""

    def sites(self, module: Conv1D) -> list[Site]:
        return [Site("", "linear", module.weight.shape[0])]

    def claimed_children(self, module: nn.Module) -> list[str]:
        return []

    def install(self, module: Conv1D, maskers: dict[Site, Masker]) -> Handle:
        (masker,) = maskers.values()

        def pre_hook(_module: nn.Module, args: tuple) -> tuple:
            x = args[0].clone()  # the input may feed other modules: mask a copy
            masker(x, -1, _ALL)
            return (x, *args[1:])

        return module.register_forward_pre_hook(pre_hook)

    def weight_fill(self, module: Conv1D, site: Site) -> torch.Tensor:
        return torch.zeros(site.size, dtype=module.weight.dtype, device=module.weight.device)

    def zero_weights_(self, module: Conv1D, site: Site, units: torch.Tensor) -> None:
        with torch.no_grad():
            module.weight[units] = 0


class HeadsBeforeProjectionAdapter:
    """Attention heads of a module whose concatenated head outputs feed the child `projection`.

    `heads(module)` gives the number of (query) heads; the head size is the projection's input
    width divided by it, so grouped-query attention counts query heads, as it should.
    """

    def __init__(self, projection: str, heads: Callable[[nn.Module], int]):
        self.projection, self.heads = projection, heads

    def sites(self, module: nn.Module) -> list[Site]:
        return [Site("", "head", self.heads(module))]

    def claimed_children(self, module: nn.Module) -> list[str]:
        return []

    def install(self, module: nn.Module, maskers: dict[Site, Masker]) -> Handle:
        (masker,) = maskers.values()
        n_heads = self.heads(module)

        def pre_hook(_module: nn.Module, args: tuple) -> tuple:
            x = args[0]
            per_head = x.reshape(*x.shape[:-1], n_heads, x.shape[-1] // n_heads).clone()  # (..., H, Dh)
            masker(per_head, -2, _ALL)
            return (per_head.reshape(x.shape), *args[1:])

        return module.get_submodule(self.projection).register_forward_pre_hook(pre_hook)

    def weight_fill(self, module: nn.Module, site: Site) -> torch.Tensor:
        w = module.get_submodule(self.projection).weight
        return torch.zeros(site.size, dtype=w.dtype, device=w.device)

    def zero_weights_(self, module: nn.Module, site: Site, units: torch.Tensor) -> None:
        projection = module.get_submodule(self.projection)
        dim = _input_dim(projection)
        size = projection.weight.shape[dim] // site.size
        with torch.no_grad():
            for h in units.tolist():
                projection.weight.narrow(dim, h * size, size).zero_()


HEAD_ADAPTERS: dict[type, HeadsBeforeProjectionAdapter] = {
    GPT2Attention: HeadsBeforeProjectionAdapter("c_proj", lambda m: m.num_heads),
    BertAttention: HeadsBeforeProjectionAdapter("output.dense", lambda m: m.self.num_attention_heads),
    ViTAttention: HeadsBeforeProjectionAdapter("o_proj", lambda m: m.num_attention_heads),
}
"""Attention module type -> its head adapter (BERT's covers MiniLM and other BertModel checkpoints)."""

_registered = False


def register() -> None:
    """Register the adapters with coar (idempotent: later calls do nothing)."""
    global _registered
    if _registered:
        return
    register_adapter(Conv1D, Conv1DRowsAdapter())
    for module_type, adapter in HEAD_ADAPTERS.items():
        register_adapter(module_type, adapter)
    _registered = True


register()
