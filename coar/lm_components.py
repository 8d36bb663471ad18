"""Heads, KV groups, MLP neurons and MoE experts of Hugging Face decoders, found from module structure.

One adapter per concept, not per model class: any transformers module is recognised by its
children and its (or its config's) head counts, so Llama, Mistral, Qwen2, Gemma2, Phi3, GPT-NeoX,
OPT, GPT-2, Mixtral, Qwen2-MoE and the like share them (coar.hf_adapters registers them).

Units, each masked where zeroing its weights acts, so batched ablation equals the published one:
- `head` (on an attention module: a class named "...Attention" with an output projection child
  such as `o_proj`, `out_proj`, `dense`, `c_proj`): one query head's slice of the output
  projection's input (zeroing it = zeroing those input columns of the projection's weight).
- `kv_group` (attention with fewer key/value heads than query heads, grouped or multi-query):
  one key/value head, i.e. its row block of `k_proj` and of `v_proj` (or the matching rows of a
  fused `qkv_proj`, laid out q | k | v), shared by several query heads. Its value is the k and v
  projections' output without their bias: "weight" ablation leaves the bias, as zeroing the rows.
- `neuron` (on an MLP: a non-attention module with a down projection child such as `down_proj`,
  `dense_4h_to_h`, `fc2`, `c_proj`): one hidden unit, the column of the down projection's input,
  for plain and gated (SwiGLU, GeGLU) MLPs alike.
- `expert` (on a mixture-of-experts block: a module whose `experts` child has `num_experts`): one
  expert; ablating it sets its routing weight to 0 for every token (the router itself, and the
  other experts' weights, untouched), which equals zeroing the expert's weights: its output then
  adds nothing. Supported for transformers' fused expert modules (3-D parameters, called as
  `experts(hidden_states, top_k_index, top_k_weights)`); other layouts are refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from coar.adapters import Adapter, Handle, Masker, Site

ALL = slice(None)
OUTPUT_PROJECTIONS = ("o_proj", "out_proj", "dense", "c_proj", "wo")
"""Child names of an attention module's output projection, tried in this order."""
DOWN_PROJECTIONS = ("down_proj", "dense_4h_to_h", "fc2", "c_proj", "w2", "fc_out")
"""Child names of an MLP's down (output) projection, tried in this order."""
FUSED_QKV = "qkv_proj"
"""Child name of a fused q/k/v projection whose output rows are all q, then all k, then all v."""


def is_projection(module: nn.Module | None) -> bool:
    """Whether `module` is a Linear or GPT-2's Conv1D (the layers whose input columns are units here)."""
    return isinstance(module, (nn.Linear, Conv1D))


def input_dim(projection: nn.Module) -> int:
    """The weight dimension that indexes a projection's inputs: 0 for Conv1D (in, out), 1 for Linear."""
    if isinstance(projection, Conv1D):
        return 0
    if isinstance(projection, nn.Linear):
        return 1
    raise TypeError(f"coar: unsupported projection {type(projection).__name__} (expected Conv1D or Linear)")


def _from_transformers(module: nn.Module) -> bool:
    return type(module).__module__.startswith("transformers.")


def _first_child(module: nn.Module, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if is_projection(getattr(module, n, None))), None)


class HandleGroup:
    """Several hook handles removed together."""

    def __init__(self, handles: list[Handle]):
        self.handles = handles

    def remove(self) -> None:
        for h in reversed(self.handles):
            h.remove()


def mask_input_columns(projection: nn.Module, masker: Masker, groups: int | None = None) -> Handle:
    """Mask a copy of `projection`'s input before it runs: units are its input features, or with
    `groups`, `groups` equal blocks of them (attention heads)."""

    def pre_hook(_module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if groups is None:
            units = x.clone()  # the input may feed other modules: mask a copy
            masker(units, -1, ALL)
            return (units, *args[1:])
        per_group = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups).clone()  # (..., H, Dh)
        masker(per_group, -2, ALL)
        return (per_group.reshape(x.shape), *args[1:])

    return projection.register_forward_pre_hook(pre_hook)


def zero_input_columns_(projection: nn.Module, units: torch.Tensor, width: int = 1) -> None:
    """Zero the weights of input features [u * width, (u + 1) * width) of `projection`, for each u."""
    dim = input_dim(projection)
    with torch.no_grad():
        for u in units.tolist():
            projection.weight.narrow(dim, u * width, width).zero_()


def _zeros(size: int, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(size, dtype=like.dtype, device=like.device)


@dataclass(frozen=True)
class AttentionShape:
    """Where an attention module's heads are: its output projection child, query and key/value
    head counts, head size, and where its k/v rows are ("separate" k_proj/v_proj, "fused"
    qkv_proj, or None when KV groups are not offered)."""

    projection: str
    heads: int
    kv_heads: int
    head_dim: int
    kv_layout: str | None


def _int_attribute(module: nn.Module, *names: str) -> int | None:
    for owner in (module, getattr(module, "config", None)):
        for name in names:
            value = getattr(owner, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def attention_shape(module: nn.Module) -> AttentionShape | None:
    """The heads of an attention module, from its children and its (or its config's) head
    attributes; None when `module` is not one or its numbers do not agree with its weights."""
    if "Attention" not in type(module).__name__:
        return None
    projection = _first_child(module, OUTPUT_PROJECTIONS)
    if projection is None:
        return None
    proj = getattr(module, projection)
    width = proj.weight.shape[input_dim(proj)]
    heads = _int_attribute(module, "num_heads", "num_attention_heads", "n_head", "n_heads")
    head_dim = _int_attribute(module, "head_dim", "head_size", "attention_head_size")
    if head_dim is None and heads is not None and width % heads == 0:
        head_dim = width // heads
    if head_dim is None or width % head_dim or (heads is not None and heads != width // head_dim):
        return None
    heads = width // head_dim
    kv_heads, layout = heads, None
    k, v, qkv = (getattr(module, n, None) for n in ("k_proj", "v_proj", FUSED_QKV))
    if isinstance(k, nn.Linear) and isinstance(v, nn.Linear) and k.out_features == v.out_features \
            and k.out_features % head_dim == 0:
        kv_heads, layout = k.out_features // head_dim, "separate"
    elif isinstance(qkv, nn.Linear) and (qkv.out_features - width) % (2 * head_dim) == 0:
        kv_heads, layout = (qkv.out_features - width) // (2 * head_dim), "fused"
    if layout is None or not 0 < kv_heads < heads or heads % kv_heads:
        kv_heads, layout = heads, None
    return AttentionShape(projection, heads, kv_heads, head_dim, layout)


def _kv_blocks(shape: AttentionShape) -> list[tuple[str, int, int]]:
    """(child, first row, copies) of the row blocks that hold the KV groups: one block of kv_heads x
    head_dim rows in k_proj and one in v_proj, or two consecutive ones after the q rows of qkv_proj."""
    if shape.kv_layout == "separate":
        return [("k_proj", 0, 1), ("v_proj", 0, 1)]
    return [(FUSED_QKV, shape.heads * shape.head_dim, 2)]


class DecoderAttentionAdapter:
    """`head` and (with grouped or multi-query KV) `kv_group` units of any attention module that
    `attention_shape` recognises."""

    def sites(self, module: nn.Module) -> list[Site]:
        shape = attention_shape(module)
        sites = [Site("", "head", shape.heads)]
        if shape.kv_layout is not None:
            sites.append(Site("", "kv_group", shape.kv_heads))
        return sites

    def claimed_children(self, module: nn.Module) -> list[str]:
        return []

    def install(self, module: nn.Module, maskers: dict[Site, Masker]) -> Handle:
        shape = attention_shape(module)
        handles: list[Handle] = []
        try:
            for site, masker in maskers.items():
                if site.kind == "head":
                    handles.append(mask_input_columns(getattr(module, shape.projection), masker, shape.heads))
                else:
                    for child, start, copies in _kv_blocks(shape):
                        handles.append(getattr(module, child).register_forward_hook(
                            _kv_rows_hook(start, copies, shape.kv_heads, shape.head_dim, masker)))
        except BaseException:
            HandleGroup(handles).remove()
            raise
        return HandleGroup(handles)

    def weight_fill(self, module: nn.Module, site: Site) -> torch.Tensor:
        return _zeros(site.size, getattr(module, attention_shape(module).projection).weight)

    def zero_weights_(self, module: nn.Module, site: Site, units: torch.Tensor) -> None:
        shape = attention_shape(module)
        if site.kind == "head":
            zero_input_columns_(getattr(module, shape.projection), units, shape.head_dim)
            return
        d = shape.head_dim
        with torch.no_grad():
            for child, start, copies in _kv_blocks(shape):
                weight = getattr(module, child).weight
                for c in range(copies):
                    for g in units.tolist():
                        first = start + (c * shape.kv_heads + g) * d
                        weight[first : first + d] = 0


def _kv_rows_hook(start: int, copies: int, kv_heads: int, head_dim: int, masker: Masker) -> Callable:
    """Forward hook on a k/v (or fused qkv) Linear: mask its KV-group row blocks, bias excluded."""
    stop = start + copies * kv_heads * head_dim

    def hook(module: nn.Linear, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        bias = module.bias[start:stop] if module.bias is not None else None
        rows = output[..., start:stop]
        rows = rows - bias if bias is not None else rows.clone()
        groups = rows.reshape(*rows.shape[:-1], copies, kv_heads, head_dim)
        masker(groups, -2, ALL)
        rows = groups.reshape(rows.shape)
        output = output.clone()
        output[..., start:stop] = rows + bias if bias is not None else rows
        return output

    return hook


def mlp_down_projection(module: nn.Module) -> str | None:
    """The child name of an MLP's down projection, or None when `module` is no MLP (attention
    modules excluded: GPT-2's attention also has a `c_proj`)."""
    if "Attention" in type(module).__name__:
        return None
    return _first_child(module, DOWN_PROJECTIONS)


class MLPNeuronsAdapter:
    """`neuron` units of an MLP: the input features of its down projection."""

    def sites(self, module: nn.Module) -> list[Site]:
        child = mlp_down_projection(module)
        proj = getattr(module, child)
        return [Site(child, "neuron", proj.weight.shape[input_dim(proj)])]

    def claimed_children(self, module: nn.Module) -> list[str]:
        return []

    def install(self, module: nn.Module, maskers: dict[Site, Masker]) -> Handle:
        ((site, masker),) = maskers.items()
        return mask_input_columns(getattr(module, site.child), masker)

    def weight_fill(self, module: nn.Module, site: Site) -> torch.Tensor:
        return _zeros(site.size, getattr(module, site.child).weight)

    def zero_weights_(self, module: nn.Module, site: Site, units: torch.Tensor) -> None:
        zero_input_columns_(getattr(module, site.child), units)


def moe_experts(module: nn.Module) -> nn.Module | None:
    """The `experts` child of a mixture-of-experts block, when it has `num_experts`."""
    experts = getattr(module, "experts", None)
    return experts if isinstance(experts, nn.Module) and isinstance(getattr(experts, "num_experts", None), int) else None


def _fused_experts(experts: nn.Module) -> bool:
    """Whether `experts` is transformers' fused layout: `experts(hidden_states, top_k_index,
    top_k_weights)` with expert-indexed 3-D parameters (the `use_experts_implementation` interface)."""
    return hasattr(experts, "is_concatenated") and any(
        p.dim() == 3 and p.shape[0] == experts.num_experts for p in experts.parameters(recurse=False))


def _refuse_expert_layout(block: nn.Module, experts: nn.Module) -> None:
    if not _fused_experts(experts):
        raise NotImplementedError(
            f"coar: the experts of {type(block).__name__} ({type(experts).__name__}) are not transformers' fused "
            "expert layout (experts(hidden_states, top_k_index, top_k_weights) with 3-D expert weights): their "
            "routing cannot be masked per example; leave the 'expert' kind out for this model")


class ExpertsAdapter:
    """`expert` units of a mixture-of-experts block: each expert's routing weight, per token."""

    def sites(self, module: nn.Module) -> list[Site]:
        return [Site("experts", "expert", moe_experts(module).num_experts)]

    def claimed_children(self, module: nn.Module) -> list[str]:
        return []

    def install(self, module: nn.Module, maskers: dict[Site, Masker]) -> Handle:
        experts = moe_experts(module)
        _refuse_expert_layout(module, experts)
        ((_site, masker),) = maskers.items()
        leading: list[torch.Size] = []

        def block_pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            leading[:] = [hidden.shape[:-1]]  # (batch, tokens): the experts see them flattened

        def experts_pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> tuple:
            names = ("hidden_states", "top_k_index", "top_k_weights")
            values = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
            index, weights = values["top_k_index"], values["top_k_weights"]
            per_expert = torch.zeros(*index.shape[:-1], experts.num_experts, dtype=weights.dtype, device=weights.device)
            per_expert.scatter_(-1, index, weights)
            if not leading or per_expert.shape[0] != leading[0].numel():
                raise RuntimeError(f"coar: {type(experts).__name__} received {per_expert.shape[0]} token rows, not the "
                                   f"{type(module).__name__} input's {tuple(leading[0]) if leading else '?'}")
            shaped = per_expert.reshape(*leading[0], experts.num_experts)
            masker(shaped, -1, ALL)
            values["top_k_weights"] = shaped.reshape(per_expert.shape).gather(-1, index)
            rest = {k: v for k, v in kwargs.items() if k not in names}
            return (values["hidden_states"], values["top_k_index"], values["top_k_weights"]), rest

        return HandleGroup([module.register_forward_pre_hook(block_pre_hook, with_kwargs=True),
                            experts.register_forward_pre_hook(experts_pre_hook, with_kwargs=True)])

    def weight_fill(self, module: nn.Module, site: Site) -> torch.Tensor:
        return _zeros(site.size, next(moe_experts(module).parameters()))

    def zero_weights_(self, module: nn.Module, site: Site, units: torch.Tensor) -> None:
        experts = moe_experts(module)
        _refuse_expert_layout(module, experts)
        with torch.no_grad():
            for p in experts.parameters(recurse=False):
                if p.shape[:1] == (experts.num_experts,):
                    p[units] = 0


def is_attention(module: nn.Module) -> bool:
    """A transformers attention module with recognisable heads."""
    return _from_transformers(module) and attention_shape(module) is not None


def is_mlp(module: nn.Module) -> bool:
    """A transformers MLP (any non-attention module with a down projection child)."""
    return _from_transformers(module) and mlp_down_projection(module) is not None


def is_moe_block(module: nn.Module) -> bool:
    """A transformers mixture-of-experts block."""
    return _from_transformers(module) and moe_experts(module) is not None


STRUCTURAL_ADAPTERS: list[tuple[Callable[[nn.Module], bool], Adapter]] = [
    (is_attention, DecoderAttentionAdapter()),
    (is_mlp, MLPNeuronsAdapter()),
    (is_moe_block, ExpertsAdapter()),
]
"""(which transformers modules, their adapter), for coar.hf_adapters to register."""
