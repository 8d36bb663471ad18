"""A faster model for the ablated passes that gives the same ablated outputs.

Three transforms, each optional (`FastPath`), applied to a copy of the user's model:

- BatchNorm folding: every Conv whose only use is an eval-mode BatchNorm becomes one Conv with
  the BN folded into its weight and bias (found with torch.fx; the conv keeps its module name,
  so the user's component list binds unchanged). An ablated filter of the original model
  outputs its fill f everywhere and the BN then maps it to BN(f) = (f - mean) * gamma /
  sqrt(var + eps) + beta; the folded model's mask op writes BN(f) directly. So every ablation
  mode (weight, zero, mean) stays exact up to float rounding; `prepare` maps the fills.
- channels_last: NHWC activations, faster convolutions on CPU (the mask op supports the layout);
  skipped for models without 4-D weights (no copy is made for nothing).
- torch.compile: `nn.Module.compile` in place, so the hooks and module names stay; the mask op
  traces through its fake kernel and mask blocks are graph inputs (no recompilation per block).

A model that torch.fx cannot trace keeps its BatchNorms (logged): slower, never wrong.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from coar.components import ComponentSet

log = logging.getLogger(__name__)

_CONV_BN = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))


@dataclass(frozen=True)
class FastPath:
    """Which transforms `prepare` applies. The defaults are exact and pay off on CPU and GPU."""

    fold_bn: bool = True
    channels_last: bool = True
    compile: bool = False

    @classmethod
    def none(cls) -> "FastPath":
        """The plain eager model."""
        return cls(fold_bn=False, channels_last=False, compile=False)


@dataclass
class Prepared:
    """The model to run, the fills that make its ablations equal the original's, and what was folded."""

    model: nn.Module
    fills: list[torch.Tensor]
    folded: list[str]


def _foldable(gm: fx.GraphModule, node: fx.Node, calls: dict[str, int]) -> tuple[str, str] | None:
    """(conv name, bn name) when `node` calls a Conv whose single use is an eval-mode BN on it alone."""
    if node.op != "call_module" or len(node.users) != 1 or calls[node.target] != 1:
        return None
    (user,) = node.users
    if user.op != "call_module" or user.args != (node,) or user.kwargs:
        return None
    conv, bn = gm.get_submodule(node.target), gm.get_submodule(user.target)
    if not any(type(conv) is c and type(bn) is b for c, b in _CONV_BN):
        return None
    if bn.training or conv.training or bn.running_mean is None or not bn.affine:
        return None
    return node.target, user.target


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, dict[str, nn.Module]]:
    """A copy of `model` with each Conv -> BN pair folded into the Conv; and the folded BN per conv name.

    Returns `model` itself and no folds when torch.fx cannot trace it.
    """
    try:
        gm = fx.symbolic_trace(copy.deepcopy(model))
    except Exception as exc:  # fx raises many types for untraceable Python control flow
        log.info("fast path: torch.fx cannot trace %s (%s); BatchNorms stay unfolded", type(model).__name__, exc)
        return model, {}
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded: dict[str, nn.Module] = {}
    for node in list(gm.graph.nodes):
        pair = _foldable(gm, node, calls)
        if pair is None:
            continue
        conv_name, bn_name = pair
        bn = gm.get_submodule(bn_name)
        gm.set_submodule(conv_name, fuse_conv_bn_eval(gm.get_submodule(conv_name), bn))
        (bn_node,) = node.users
        bn_node.replace_all_uses_with(node)
        gm.graph.erase_node(bn_node)
        folded[conv_name] = bn
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, folded


def batchnorm_map(bn: nn.Module, values: torch.Tensor) -> torch.Tensor:
    """What an eval-mode BN outputs for a channel whose every input value is `values[c]` (in float64, then cast back)."""
    mean, var = bn.running_mean.detach().double().cpu(), bn.running_var.detach().double().cpu()
    gamma, beta = bn.weight.detach().double().cpu(), bn.bias.detach().double().cpu()
    out = (values.detach().double().cpu() - mean) * gamma / torch.sqrt(var + bn.eps) + beta
    return out.to(dtype=values.dtype, device=values.device)


def prepare(model: nn.Module, components: ComponentSet, fills: list[torch.Tensor], options: FastPath) -> Prepared:
    """Apply `options` to a copy of `model` (eval mode) and map `fills` (one per group, the original model's) to it."""
    if model.training:
        raise ValueError("the fast path needs the model in eval mode (call model.eval())")
    if len(fills) != len(components.groups):
        raise ValueError(f"fills must hold one tensor per component group ({len(components.groups)}), got {len(fills)}")
    folded: dict[str, nn.Module] = {}
    out = model
    if options.fold_bn:
        out, folded = fold_batchnorm(model)
    fills = [batchnorm_map(folded[g.module], f) if g.module in folded and g.kind == "conv" else f
             for g, f in zip(components.groups, fills)]
    if options.channels_last and any(p.dim() == 4 for p in out.parameters()):
        out = (copy.deepcopy(out) if out is model else out).to(memory_format=torch.channels_last)
    if options.compile:
        out = copy.deepcopy(out) if out is model else out
        out.compile(dynamic=False)
    return Prepared(out.eval(), fills, sorted(folded))
