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
from typing import Callable

import torch
from torch import nn

from coar.adapters import Adapter, Handle, Masker, Site, adapter_for
from coar.components import ComponentGroup, ComponentSet, iter_sites, site_module_name, weight_sharers
from coar.ops import apply_masks_
from coar.constants import ABLATION_MODES as MODES, AblationMode as Mode


@dataclass(frozen=True)
class BoundGroup:
    """A component group tied to the module that masks it: the unit every intervention attaches to.

    `owner` is the module whose adapter installs the hook, `site` the group of units on it.
    """

    group: ComponentGroup
    owner: nn.Module
    adapter: Adapter
    site: Site


def bind(model: nn.Module, components: ComponentSet, *, allow_tied: bool = False) -> list[BoundGroup]:
    """Find each group's module in `model`; refuse components that the model does not have.

    Also refuses groups whose weights are tied to another module (see `tied_weights`): zeroing
    them for real would change that module too, which batched ablation cannot reproduce.
    `allow_tied` skips that check (for callers that report it themselves).
    """
    sites = {(site_module_name(name, s.child), s.kind): (module, s) for name, module, s in iter_sites(model)}
    bound = []
    for g in components.groups:
        if (g.module, g.kind) not in sites:
            raise ValueError(f"the model has no {g.kind} units on module {g.module!r}: the component list was made for another model")
        owner, site = sites[(g.module, g.kind)]
        if site.size != g.size:
            raise ValueError(f"{g.module!r} has {site.size} {g.kind} units but the component list says {g.size}")
        bound.append(BoundGroup(g, owner, adapter_for(owner), site))
    if not allow_tied:
        tied = tied_weights(model, bound)
        if tied:
            raise ValueError("; ".join(tied.values()))
    return bound


def tied_weights(model: nn.Module, bound: list[BoundGroup]) -> dict[int, str]:
    """Groups (by index in `bound`) whose owner shares a Parameter with a module outside it.

    The value is a message naming both modules. A module object used twice is not tied: its
    hook and its weights cover every use alike.
    """
    sharers = weight_sharers(model)
    found = {}
    for i, b in enumerate(bound):
        others = sharers(b.owner)
        if others:
            found[i] = (
                f"{b.group.module!r} shares a weight Parameter with {others} (tied weights): "
                "zeroing its rows would change those modules too, which batched ablation cannot reproduce; "
                "exclude it from the components or untie the weights"
            )
    return found


class _FastPathOff:
    """Handle that turns PyTorch's fused transformer fast path off until removed.

    In eval mode `nn.TransformerEncoderLayer` and `nn.MultiheadAttention` may run as one fused
    kernel that never calls the submodules coar hooks; with the fast path off they run their
    ordinary (numerically equivalent) code.
    """

    def __init__(self):
        self.previous = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)

    def remove(self) -> None:
        torch.backends.mha.set_fastpath_enabled(self.previous)


def install_maskers(bound: list[BoundGroup], masker_for: Callable[[int], Masker]) -> list[Handle]:
    """Attach `masker_for(i)` to group `bound[i]`, for every i: the hook primitive.

    Each owning module gets one hook for all its sites (MHA owns three). While installed,
    PyTorch's fused transformer fast path is off so that the hooks are reached. Remove the
    returned handles (e.g. with `remove_all`) to restore the model; on failure nothing stays
    installed.
    """
    by_owner: dict[int, list[tuple[int, BoundGroup]]] = {}
    for i, b in enumerate(bound):
        by_owner.setdefault(id(b.owner), []).append((i, b))
    handles: list[Handle] = [_FastPathOff()]
    try:
        for items in by_owner.values():
            first = items[0][1]
            handles.append(first.adapter.install(first.owner, {b.site: masker_for(i) for i, b in items}))
    except BaseException:
        remove_all(handles)
        raise
    return handles


def remove_all(handles: list[Handle]) -> None:
    """Remove hooks installed by `install_maskers`, last first."""
    for h in reversed(handles):
        h.remove()


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

    handles = install_maskers(bound, recorder)
    try:
        device = _model_device(model)
        for start in range(0, len(reference_inputs), batch_size):
            model(reference_inputs[start : start + batch_size].to(device))
    finally:
        remove_all(handles)
    return [(s / c.clamp(min=1)).float() for s, c in zip(sums, counts)]


class Ablation:
    """Context manager: while active, forward passes apply the current (k x N) mask block.

    Reuse one `Ablation` across mask blocks with `set_masks` to avoid reinstalling hooks.
    The model's input holds the batch on dim 0 (k masks x n examples). Inside the model, each
    group's masker finds the batch on `batch_dims[i]` (default 0; `coar.exactness.probe_layout`
    finds the true axis, e.g. 1 for sequence-first activations) and refuses a tensor whose batch
    axis does not hold the model's batch, naming the module. `check_reached` after a pass
    refuses groups that pass should have ablated but never reached.
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
        batch_dims: list[int] | None = None,
        folds: list[int] | None = None,
    ):
        self.model, self.components = model, components
        self._bound = bind(model, components)
        self._device = _model_device(model)
        fills = fills if fills is not None else unit_fills(model, components, mode, reference_inputs)
        if len(fills) != len(self._bound) or any(f.shape != (b.group.size,) for f, b in zip(fills, self._bound)):
            raise ValueError("fills must hold one tensor per component group with one value per unit")
        self._batch_dims = list(batch_dims) if batch_dims is not None else [0] * len(self._bound)
        self._folds = list(folds) if folds is not None else [1] * len(self._bound)
        if len(self._batch_dims) != len(self._bound) or len(self._folds) != len(self._bound):
            raise ValueError("batch_dims and folds must hold one value per component group")
        self._fills = [f.to(self._device) for f in fills]
        self._fills_by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        self._group_masks: list[torch.Tensor | None] = [None] * len(self._bound)
        self._used = [False] * len(self._bound)
        self._reached: set[int] = set()
        self._rows: int | None = None
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

    def _masker(self, i: int) -> Masker:
        def mask(x: torch.Tensor, dim: int, units: slice) -> None:
            self._reached.add(i)
            block = self._group_masks[i]
            if block is None or (not torch.compiler.is_compiling() and not self._used[i]):
                return
            b, d, fold = self._batch_dims[i], dim % x.dim(), self._folds[i]
            if b >= x.dim() or b == d or (self._rows is not None and x.shape[b] != self._rows * fold):
                raise RuntimeError(
                    f"coar: module {self._bound[i].group.module!r} produced a tensor of shape {tuple(x.shape)} whose "
                    f"batch axis {b} does not hold the model's batch of {self._rows} rows x {fold} "
                    f"(k={len(block)} masks x examples): "
                    "its activations are laid out otherwise (e.g. sequence-first, or the batch folded into another axis); "
                    "coar.exactness.probe_layout finds the axis, or refuses when there is none"
                )
            fill = self._fill(i, x.dtype)
            if units != slice(None):
                block, fill = block[:, units].contiguous(), fill[units]
            if b == 0:
                apply_masks_(x, block, fill, d)
            else:  # batch elsewhere (e.g. sequence-first): mask a batch-first copy, write it back
                moved = x.movedim(b, 0).contiguous()
                apply_masks_(moved, block, fill, d + 1 if d < b else d)
                x.copy_(moved.movedim(0, b))

        return mask

    def _start_pass(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on the model: a new pass starts; its input's dim 0 is the batch."""
        self._reached = set()
        first = next((t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)), None)
        self._rows = first.shape[0] if first is not None and first.dim() > 0 else None

    def check_reached(self) -> None:
        """Raise if a group with ablated units was not reached by the last forward pass.

        Fused fast paths (a whole layer in one kernel) or a parent using a module's weight
        directly (F.linear(x, module.weight)) bypass module forwards, which would silently run
        the unablated model. Cheap (a set lookup per group): call it after every pass.
        """
        missed = [b.group.module for i, b in enumerate(self._bound) if self._used[i] and i not in self._reached]
        if missed:
            raise RuntimeError(
                f"ablation never reached {len(missed)} module(s) during the forward pass, e.g. {missed[:3]}: "
                + unreached_cause(self.model, missed[0])
            )

    def __enter__(self) -> "Ablation":
        self._handles = install_maskers(self._bound, self._masker)
        self._handles.append(self.model.register_forward_pre_hook(self._start_pass, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        remove_all(self._handles)
        self._handles = []


def unreached_cause(model: nn.Module, module: str) -> str:
    """The likely reason a hooked module was never called, naming its parent and how to fix it."""
    parent_name = module.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    kind = type(parent).__name__
    if isinstance(parent, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        return (f"its parent {parent_name!r} ({kind}) ran a fused fast path; coar turns PyTorch's off while it "
                "ablates (torch.backends.mha.set_fastpath_enabled(False)), so another fused kernel skipped it")
    return (f"its parent {parent_name or '<model>'!r} ({kind}) likely uses its weight directly (e.g. "
            "F.linear(x, module.weight)) or a fused fast path, so the module's own forward never runs; "
            f"exclude it from the components (e.g. components.exclude: ['*.{module.rpartition('.')[2]}']) "
            "or let prepare drop it (components.unreachable: drop)")


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
