"""Unit adapters: how each module type exposes ablatable units and where they are masked.

An adapter tells, for one module type, which groups of units it has ("sites"), how to reach
their values during a forward pass (so the batched-mask op can overwrite them), what the
published `weight` ablation fills them with, and how to zero their weights for real (the slow
published procedure, and permanent edits). New architectures plug in with `register_adapter`
without touching discovery or the ablation machinery.

A masker is a callable `masker(x, dim, units)` applied in place to a tensor whose `dim` indexes
the site's units `units` (a slice of the site's unit range). Adapters hand maskers the tensor as
the model computes it; which axis of it is the batch is found by coar.exactness (a probe with two
batch sizes), not assumed by the adapter, so sequence-first activations are masked exactly.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

Masker = Callable[[torch.Tensor, int, slice], None]


@dataclass(frozen=True)
class Site:
    """A group of units of one kind on a module; `child` names a submodule ("" for itself)."""

    child: str
    kind: str
    size: int


class Handle(Protocol):
    def remove(self) -> None: ...


class Adapter(Protocol):
    """What a module type must provide for its units to be ablatable."""

    def sites(self, module: nn.Module) -> list[Site]: ...

    def claimed_children(self, module: nn.Module) -> list[str]:
        """Children this adapter masks itself (discovery skips their own adapters)."""
        ...

    def install(self, module: nn.Module, maskers: dict[Site, Masker]) -> Handle: ...

    def weight_fill(self, module: nn.Module, site: Site) -> torch.Tensor:
        """Per-unit value the unit outputs once its weights are zeroed (the bias, or 0)."""
        ...

    def zero_weights_(self, module: nn.Module, site: Site, units: torch.Tensor) -> None:
        """Zero the weights of `units` (int indices) in place: the published ablation."""
        ...


def _bias_or_zeros(bias: torch.Tensor | None, size: int, like: torch.Tensor) -> torch.Tensor:
    return bias.detach().clone() if bias is not None else torch.zeros(size, dtype=like.dtype, device=like.device)


class OutputChannelsAdapter:
    """Units are output channels (at `dim` of the module's output) of a module with a `weight`
    whose rows are the units (Linear, Conv)."""

    def __init__(self, kind: str, dim: int):
        self.kind, self.dim = kind, dim

    def sites(self, module: nn.Module) -> list[Site]:
        return [Site("", self.kind, module.weight.shape[0])]

    def claimed_children(self, module: nn.Module) -> list[str]:
        return []

    def install(self, module: nn.Module, maskers: dict[Site, Masker]) -> Handle:
        (masker,) = maskers.values()
        full = slice(None)

        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            masker(output, self.dim, full)

        return module.register_forward_hook(hook)

    def weight_fill(self, module: nn.Module, site: Site) -> torch.Tensor:
        return _bias_or_zeros(module.bias, site.size, module.weight)

    def zero_weights_(self, module: nn.Module, site: Site, units: torch.Tensor) -> None:
        with torch.no_grad():
            module.weight[units] = 0


class TransposedConvAdapter(OutputChannelsAdapter):
    """`ConvTranspose1d/2d/3d`: units are output channels (dim 1 of the output).

    Their weight is stored (in, out / groups, ...): output channel c of group g = c // (out / groups)
    is column c % (out / groups) of the rows of that group's input channels.
    """

    def __init__(self):
        super().__init__("conv", 1)

    def sites(self, module: nn.Module) -> list[Site]:
        return [Site("", self.kind, module.out_channels)]

    def zero_weights_(self, module: nn.Module, site: Site, units: torch.Tensor) -> None:
        per_group_in = module.in_channels // module.groups
        per_group_out = module.out_channels // module.groups
        with torch.no_grad():
            for c in units.tolist():
                g, j = divmod(c, per_group_out)
                module.weight[g * per_group_in : (g + 1) * per_group_in, j] = 0


def output_channel_dim(adapter: Adapter | None) -> int | None:
    """The dim of its module's output that holds `adapter`'s units when they are exactly that
    module's output channels (so the module can be treated as a layer, e.g. by captum), else None."""
    return adapter.dim if isinstance(adapter, OutputChannelsAdapter) else None


class _PatchedForward:
    """Handle that restores a module's class forward when removed."""

    def __init__(self, module: nn.Module, forward: Callable):
        self.module = module
        module.forward = types.MethodType(forward, module)

    def remove(self) -> None:
        if "forward" in self.module.__dict__:
            del self.module.forward


class MultiheadAttentionAdapter:
    """`nn.MultiheadAttention`: heads, rows of the packed q/k/v projection, out_proj neurons.

    PyTorch's MHA calls its projections' weights directly (never `out_proj.forward`), so hooks
    cannot reach inside it. While masks are installed its forward is replaced by an equivalent
    one (in-projection, scaled dot-product attention, out-projection) that exposes three sites:
    `qkv` (the 3E in-projection outputs), `head` (each head's output, the input slice of the
    output projection: masking it equals zeroing that slice of `out_proj.weight`) and the
    `linear` neurons of `out_proj`.
    """

    def sites(self, module: nn.MultiheadAttention) -> list[Site]:
        e = module.embed_dim
        return [Site("", "head", module.num_heads), Site("", "qkv", 3 * e), Site("out_proj", "linear", e)]

    def claimed_children(self, module: nn.Module) -> list[str]:
        return ["out_proj"]

    def install(self, module: nn.MultiheadAttention, maskers: dict[Site, Masker]) -> Handle:
        if module.bias_k is not None or module.add_zero_attn:
            raise NotImplementedError(
                "coar: nn.MultiheadAttention with add_bias_kv=True or add_zero_attn=True is not supported"
            )
        by_kind = {site.kind: masker for site, masker in maskers.items()}
        return _PatchedForward(module, _mha_forward_factory(by_kind))

    def weight_fill(self, module: nn.MultiheadAttention, site: Site) -> torch.Tensor:
        w = module.out_proj.weight
        if site.kind == "head":
            return torch.zeros(site.size, dtype=w.dtype, device=w.device)
        if site.kind == "qkv":
            return _bias_or_zeros(module.in_proj_bias, site.size, w)
        return _bias_or_zeros(module.out_proj.bias, site.size, w)

    def zero_weights_(self, module: nn.MultiheadAttention, site: Site, units: torch.Tensor) -> None:
        with torch.no_grad():
            if site.kind == "head":
                d = module.head_dim
                for h in units.tolist():
                    module.out_proj.weight[:, h * d : (h + 1) * d] = 0
            elif site.kind == "qkv":
                if module._qkv_same_embed_dim:
                    module.in_proj_weight[units] = 0
                else:
                    e = module.embed_dim
                    for r in units.tolist():
                        (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)[r // e][r % e] = 0
            else:
                module.out_proj.weight[units] = 0


def _noop(x: torch.Tensor, dim: int, units: slice) -> None:
    return None


def _mha_forward_factory(maskers: dict[str, Masker]) -> Callable:
    """Build an nn.MultiheadAttention forward that calls `maskers` at the head/qkv/linear sites."""
    mask_qkv = maskers.get("qkv", _noop)
    mask_head = maskers.get("head", _noop)
    mask_out = maskers.get("linear", _noop)

    def forward(self: nn.MultiheadAttention, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        if not self.batch_first:  # work batch-first: the mask op wants the batch on dim 0
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        e, h = self.embed_dim, self.num_heads
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
        for i, t in enumerate((q, k, v)):
            mask_qkv(t, -1, slice(i * e, (i + 1) * e))
        bsz, tgt, src = q.shape[0], q.shape[1], k.shape[1]
        q, k, v = (t.reshape(bsz, -1, h, self.head_dim).transpose(1, 2) for t in (q, k, v))
        bias = _attention_bias(attn_mask, key_padding_mask, bsz, h, tgt, src, q.dtype)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            if bias is not None:
                scores = scores + bias
            weights = F.dropout(scores.softmax(-1), p=dropout, training=self.training)
            attn = weights @ v
        else:
            weights = None
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout,
                                                  is_causal=is_causal and bias is None)
        heads = attn.transpose(1, 2).contiguous()  # (B, T, H, Dh)
        mask_head(heads, 2, slice(None))
        out = F.linear(heads.reshape(bsz, tgt, e), self.out_proj.weight, self.out_proj.bias)
        mask_out(out, -1, slice(None))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights

    return forward


def _attention_bias(attn_mask, key_padding_mask, bsz, heads, tgt, src, dtype) -> torch.Tensor | None:
    """Merge MHA's attention and key-padding masks into one additive (B, H, T, S) bias."""
    bias = None
    if attn_mask is not None:
        m = attn_mask if attn_mask.dtype != torch.bool else torch.zeros_like(attn_mask, dtype=dtype).masked_fill(attn_mask, float("-inf"))
        bias = m.to(dtype).reshape(-1, heads, tgt, src) if m.dim() == 3 else m.to(dtype).reshape(1, 1, tgt, src)
    if key_padding_mask is not None:
        kp = key_padding_mask
        kp = torch.zeros_like(kp, dtype=dtype).masked_fill(kp, float("-inf")) if kp.dtype == torch.bool else kp.to(dtype)
        kp = kp.reshape(bsz, 1, 1, src)
        bias = kp if bias is None else bias + kp
    return bias


_REGISTRY: list[tuple[type | Callable[[nn.Module], bool], Adapter]] = [
    (nn.MultiheadAttention, MultiheadAttentionAdapter()),
    (nn.Conv1d, OutputChannelsAdapter("conv", 1)),
    (nn.Conv2d, OutputChannelsAdapter("conv", 1)),
    (nn.Conv3d, OutputChannelsAdapter("conv", 1)),
    (nn.ConvTranspose1d, TransposedConvAdapter()),
    (nn.ConvTranspose2d, TransposedConvAdapter()),
    (nn.ConvTranspose3d, TransposedConvAdapter()),
    (nn.Linear, OutputChannelsAdapter("linear", -1)),
]


def register_adapter(module_type: type | Callable[[nn.Module], bool], adapter: Adapter) -> None:
    """Make units of `module_type` ablatable; later registrations take precedence.

    `module_type` is a class, or a predicate on modules for adapters that recognise modules by
    their structure rather than their class (coar.lm_components)."""
    _REGISTRY.insert(0, (module_type, adapter))


def adapter_for(module: nn.Module) -> Adapter | None:
    """The adapter of the most recently registered type (or predicate) `module` matches, if any."""
    for module_type, adapter in _REGISTRY:
        if isinstance(module, module_type) if isinstance(module_type, type) else module_type(module):
            return adapter
    return None
