"""Ablating components: batched in-place masking during forward passes, and for real.

`Ablation` is a context manager that installs hooks for a (k x N) boolean mask block (True =
ablated) and removes them on exit, also when the body raises. Inside it, a forward pass over a
batch of k masks x n examples (mask j on batch rows j*n .. j*n+n-1) evaluates k ablated models
at once. `ablate_weights_` is the published procedure (zero the units' weights) applied to a
model for real: it is the slow reference the batched path is tested against, and how edits are
made permanent.

Ablation modes (what an ablated unit outputs):
- "weight": what it outputs once its weight row is zeroed, i.e. its bias (0 without bias);
  for a head, 0 (its slice of the output projection's input is zeroed). The published one.
- "zero": 0.
- "mean": its mean output over reference inputs the caller gives (averaged over every
  position of the unit too, so one constant per unit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from coar.adapters import Adapter, Handle, Site, adapter_for
from coar.components import ComponentGroup, ComponentSet, _site_module, iter_sites
from coar.ops import apply_masks_

Mode = Literal["weight", "zero", "mean"]
MODES = ("weight", "zero", "mean")


@dataclass(frozen=True)
class _Bound:
    """A component group tied to the module that masks it."""

    group: ComponentGroup
    owner: nn.Module
    adapter: Adapter
    site: Site


def bind(model: nn.Module, components: ComponentSet) -> list[_Bound]:
    """Find each group's module in `model`; refuse components that the model does not have."""
    sites = {(_site_module(name, s.child), s.kind): (module, s) for name, module, s in iter_sites(model)}
    bound = []
    for g in components.groups:
        if (g.module, g.kind) not in sites:
            raise ValueError(f"the model has no {g.kind} units on module {g.module!r}: the component list was made for another model")
        owner, site = sites[(g.module, g.kind)]
        if site.size != g.size:
            raise ValueError(f"{g.module!r} has {site.size} {g.kind} units but the component list says {g.size}")
        bound.append(_Bound(g, owner, adapter_for(owner), site))
    return bound


def _install(bound: list[_Bound], masker_for) -> list[Handle]:
    """Install `masker_for(i)` for each group i, once per owning module (MHA owns three sites)."""
    by_owner: dict[int, list[tuple[int, _Bound]]] = {}
    for i, b in enumerate(bound):
        by_owner.setdefault(id(b.owner), []).append((i, b))
    handles = []
    try:
        for items in by_owner.values():
            first = items[0][1]
            handles.append(first.adapter.install(first.owner, {b.site: masker_for(i) for i, b in items}))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    return handles


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def unit_fills(
    model: nn.Module,
    components: ComponentSet,
    mode: Mode = "weight",
    reference_inputs: torch.Tensor | None = None,
    batch_size: int = 256,
) -> list[torch.Tensor]:
    """The value each ablated unit takes under `mode`, one float32 tensor per group."""
    if mode not in MODES:
        raise ValueError(f"unknown ablation mode {mode!r}; choose from {list(MODES)}")
    bound = bind(model, components)
    if mode == "weight":
        return [b.adapter.weight_fill(b.owner, b.site).float().cpu() for b in bound]
    if mode == "zero":
        return [torch.zeros(b.group.size) for b in bound]
    if reference_inputs is None or len(reference_inputs) == 0:
        raise ValueError("mean ablation needs reference_inputs to average unit outputs over")
    sums = [torch.zeros(b.group.size, dtype=torch.float64) for b in bound]
    counts = [torch.zeros(b.group.size, dtype=torch.float64) for b in bound]

    def recorder(i: int):
        def record(x: torch.Tensor, dim: int, units: slice) -> None:
            d = dim % x.dim()
            reduce = [j for j in range(x.dim()) if j != d]
            sums[i][units] += x.double().sum(dim=reduce).cpu()
            counts[i][units] += x.numel() / x.shape[d]

        return record

    handles = _install(bound, recorder)
    try:
        device = _model_device(model)
        for start in range(0, len(reference_inputs), batch_size):
            model(reference_inputs[start : start + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
    return [(s / c.clamp(min=1)).float() for s, c in zip(sums, counts)]


class Ablation:
    """Context manager: while active, forward passes apply the current (k x N) mask block.

    Reuse one `Ablation` across mask blocks with `set_masks` to avoid reinstalling hooks.
    """

    def __init__(
        self,
        model: nn.Module,
        components: ComponentSet,
        masks: torch.Tensor | None = None,
        *,
        mode: Mode = "weight",
        fills: list[torch.Tensor] | None = None,
        reference_inputs: torch.Tensor | None = None,
    ):
        self.model, self.components = model, components
        self._bound = bind(model, components)
        self._device = _model_device(model)
        fills = fills if fills is not None else unit_fills(model, components, mode, reference_inputs)
        if len(fills) != len(self._bound) or any(f.shape != (b.group.size,) for f, b in zip(fills, self._bound)):
            raise ValueError("fills must hold one tensor per component group with one value per unit")
        self._fills = [f.to(self._device) for f in fills]
        self._fills_by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        self._group_masks: list[torch.Tensor | None] = [None] * len(self._bound)
        self._used = [False] * len(self._bound)
        self._reached: set[int] = set()
        self._handles: list[Handle] = []
        if masks is not None:
            self.set_masks(masks)

    def set_masks(self, masks: torch.Tensor) -> None:
        """Use `masks` (k x N bool, True = ablated) for the following forward passes."""
        masks = torch.as_tensor(masks)
        if masks.dim() != 2 or masks.shape[1] != len(self.components) or masks.dtype != torch.bool:
            raise ValueError(
                f"masks must be a (k, {len(self.components)}) bool array, got {masks.dtype} of shape {tuple(masks.shape)}"
            )
        host = masks.cpu()  # decide on the host which groups ablate anything: no device sync per group
        used = [bool(host[:, b.group.start : b.group.stop].any()) for b in self._bound]
        masks = masks.to(self._device)
        # Every group keeps its (possibly all-False) block, so under torch.compile the graph does not
        # depend on which groups a block ablates (no recompiles); eager passes skip unused groups.
        self._used = used
        self._group_masks = [masks[:, b.group.start : b.group.stop].contiguous() for b in self._bound]
        self._reached = set()

    def _fill(self, i: int, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._fills_by_dtype:
            self._fills_by_dtype[dtype] = [f.to(dtype) for f in self._fills]
        return self._fills_by_dtype[dtype][i]

    def _masker(self, i: int):
        def mask(x: torch.Tensor, dim: int, units: slice) -> None:
            block = self._group_masks[i]
            self._reached.add(i)
            if block is None or (not torch.compiler.is_compiling() and not self._used[i]):
                return
            fill = self._fill(i, x.dtype)
            if units != slice(None):
                block, fill = block[:, units].contiguous(), fill[units]
            apply_masks_(x, block, fill, dim)

        return mask

    def check_reached(self) -> None:
        """Raise if a group with ablated units was never reached by the last forward pass(es).

        Fused fast paths (e.g. a whole encoder layer in one kernel) can bypass module forwards,
        which would silently run the unablated model.
        """
        missed = [b.group.module for i, b in enumerate(self._bound) if self._used[i] and i not in self._reached]
        if missed:
            raise RuntimeError(
                f"ablation never reached {len(missed)} module(s) during the forward pass, e.g. {missed[:3]}; "
                "the model may call them through a fused fast path or not at all"
            )

    def __enter__(self) -> "Ablation":
        self._handles = _install(self._bound, self._masker)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def ablate(model: nn.Module, components: ComponentSet, masks: torch.Tensor, **kwargs) -> Ablation:
    """`with ablate(model, components, masks): model(batch)` runs k ablated models at once."""
    return Ablation(model, components, masks, **kwargs)


@torch.no_grad()
def ablate_weights_(model: nn.Module, components: ComponentSet, mask: torch.Tensor) -> nn.Module:
    """Zero the weights of the components `mask` (N bool, True = ablated) marks, in place.

    The published ablation (equivalent to the "weight" mode); returns `model`.
    """
    mask = torch.as_tensor(mask, dtype=torch.bool).cpu()
    if mask.shape != (len(components),):
        raise ValueError(f"mask must have shape ({len(components)},), got {tuple(mask.shape)}")
    for b in bind(model, components):
        units = mask[b.group.start : b.group.stop].nonzero().flatten()
        if len(units):
            b.adapter.zero_weights_(b.owner, b.site, units.to(_model_device(model)))
    return model
