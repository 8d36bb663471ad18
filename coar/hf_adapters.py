"""Adapters for Hugging Face transformers modules: GPT-2's Conv1D, BERT and ViT heads, and (from
coar.lm_components) the heads, KV groups, MLP neurons and experts of any decoder.

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
- attention heads ("head") of BERT and ViT (decoders: coar.lm_components): each head's slice of the output projection's input, masked by a
  forward pre-hook on the projection, which works whatever attention implementation (eager,
  sdpa, ...) computes the heads. Zeroing a head equals zeroing that slice of the projection's
  input weights.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertAttention
from transformers.models.vit.modeling_vit import ViTAttention
from transformers.pytorch_utils import Conv1D

from coar.adapters import Handle, Masker, Site, register_adapter
from coar.lm_components import STRUCTURAL_ADAPTERS, input_dim, mask_input_columns, zero_input_columns_


class Conv1DRowsAdapter:
    """GPT-2's `Conv1D`: one "linear" unit per row of its (in, out) weight, i.e. per input feature."""

    def sites(self, module: Conv1D) -> list[Site]:
        return [Site("", "linear", module.weight.shape[0])]

    def claimed_children(self, module: nn.Module) -> list[str]:
        return []

    def install(self, module: Conv1D, maskers: dict[Site, Masker]) -> Handle:
        (masker,) = maskers.values()
        return mask_input_columns(module, masker)

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
        return mask_input_columns(module.get_submodule(self.projection), masker, self.heads(module))

    def weight_fill(self, module: nn.Module, site: Site) -> torch.Tensor:
        w = module.get_submodule(self.projection).weight
        return torch.zeros(site.size, dtype=w.dtype, device=w.device)

    def zero_weights_(self, module: nn.Module, site: Site, units: torch.Tensor) -> None:
        projection = module.get_submodule(self.projection)
        zero_input_columns_(projection, units, projection.weight.shape[input_dim(projection)] // site.size)


HEAD_ADAPTERS: dict[type, HeadsBeforeProjectionAdapter] = {
    BertAttention: HeadsBeforeProjectionAdapter("output.dense", lambda m: m.self.num_attention_heads),
    ViTAttention: HeadsBeforeProjectionAdapter("o_proj", lambda m: m.num_attention_heads),
}
"""Attention module type -> its head adapter, for encoders whose attention module the structural
adapters do not recognise (BERT's covers MiniLM and other BertModel checkpoints). Decoders (GPT-2
included) get theirs from coar.lm_components."""

_registered = False


def register() -> None:
    """Register the adapters with coar (idempotent: later calls do nothing)."""
    global _registered
    if _registered:
        return
    for matches, adapter in STRUCTURAL_ADAPTERS:
        register_adapter(matches, adapter)
    register_adapter(Conv1D, Conv1DRowsAdapter())
    for module_type, adapter in HEAD_ADAPTERS.items():
        register_adapter(module_type, adapter)
    _registered = True


register()
