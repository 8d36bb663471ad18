"""The batched-mask op `torch.ops.coar.apply_masks_`, its reference and backend selection.

`apply_masks_(x, mask, fill, dim)` works in place on a component module's output `x` whose
batch holds k masks x n examples (mask row j applies to batch rows j*n .. j*n+n-1): wherever
`mask[j, c]` is true, every value of unit c (index c along `dim`) becomes `fill[c]`.

The compiled op (C++ on CPU, CUDA on GPU) lives in `coar._C`. The pure-PyTorch
`reference_apply_masks_` defines the semantics: the compiled paths are tested against it, and
it is the fallback (with one warning) when the extension cannot be loaded. Set
COAR_REQUIRE_EXT=1 to make a missing or broken extension an error instead.
"""

from __future__ import annotations

import os
import warnings

import torch

_SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

try:
    from coar import _C  # noqa: F401  (loading the library registers torch.ops.coar.*)

    _LOAD_ERROR: Exception | None = None
except ImportError as exc:  # includes ABI errors such as "undefined symbol"
    if os.environ.get("COAR_REQUIRE_EXT") == "1":
        raise ImportError(
            f"coar's compiled extension failed to load ({exc}). It must be built against the "
            "installed torch: reinstall with `pip install --no-build-isolation -e .`. "
            "(COAR_REQUIRE_EXT=1 makes this fatal; unset it to fall back to the reference op.)"
        ) from exc
    _LOAD_ERROR = exc

_warned = False


if _LOAD_ERROR is None:

    @torch.library.register_fake("coar::apply_masks_")
    def _apply_masks_fake(x: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor, dim: int) -> None:
        """Shape-only kernel so the op traces under torch.compile (it returns nothing)."""
        return None


def backend(device: str | torch.device = "cpu") -> str:
    """Which implementation `apply_masks_` uses on `device`: "compiled" or "reference"."""
    return _backend_for(torch.device(device).type)


def _kernel_devices() -> frozenset[str]:
    """Device types with a compiled kernel, read once at import (kernels register when _C loads).

    A plain set lookup per call: cheap, and torch.compile traces it as a constant.
    """
    if _LOAD_ERROR is not None:
        return frozenset()
    keys = {"cpu": "CPU", "cuda": "CUDA"}
    return frozenset(t for t, k in keys.items() if torch._C._dispatch_has_kernel_for_dispatch_key("coar::apply_masks_", k))


_KERNEL_DEVICES = _kernel_devices()


def _backend_for(device_type: str) -> str:
    return "compiled" if device_type in _KERNEL_DEVICES else "reference"


def extension_error() -> Exception | None:
    """Why the compiled extension did not load (None when it did)."""
    return _LOAD_ERROR


def _unit_view(x: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor, dim: int) -> torch.Tensor:
    """Validate like the compiled op and return x viewed as (B, P, C, Q)."""
    if x.dim() < 2:
        raise RuntimeError(f"apply_masks_: x must have a batch dim and a unit dim, got shape {tuple(x.shape)}")
    d = dim + x.dim() if dim < 0 else dim
    if not 1 <= d < x.dim():
        raise RuntimeError(
            f"apply_masks_: dim={dim} must name a unit dim of x (1..{x.dim() - 1} or negative); dim 0 is the batch"
        )
    if x.dtype not in _SUPPORTED_DTYPES:
        raise RuntimeError(f"apply_masks_: x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise RuntimeError(f"apply_masks_: mask must be a (k, units) bool tensor, got {mask.dtype} of shape {tuple(mask.shape)}")
    if fill.dim() != 1:
        raise RuntimeError(f"apply_masks_: fill must be 1-D (one value per unit), got shape {tuple(fill.shape)}")
    if mask.device != x.device or fill.device != x.device:
        raise RuntimeError(
            f"apply_masks_: x, mask and fill must be on one device, got x on {x.device}, "
            f"mask on {mask.device}, fill on {fill.device}"
        )
    if fill.dtype != x.dtype:
        raise RuntimeError(f"apply_masks_: fill dtype {fill.dtype} differs from x dtype {x.dtype}")
    units = x.shape[d]
    if mask.shape[1] != units:
        raise RuntimeError(f"apply_masks_: mask has {mask.shape[1]} columns but x has {units} units along dim {d}")
    if fill.shape[0] != units:
        raise RuntimeError(f"apply_masks_: fill has {fill.shape[0]} values but x has {units} units along dim {d}")
    k, batch = mask.shape[0], x.shape[0]
    if k < 1:
        raise RuntimeError("apply_masks_: mask has no rows (k = 0)")
    if batch % k:
        raise RuntimeError(
            f"apply_masks_: batch of {batch} rows is not divisible by k={k} masks "
            "(the batch must hold k masks x n examples)"
        )
    before = int(torch.tensor(x.shape[1:d]).prod()) if d > 1 else 1
    after = int(torch.tensor(x.shape[d + 1 :]).prod()) if d + 1 < x.dim() else 1
    try:
        return x.view(batch, before, units, after)
    except RuntimeError as exc:
        raise RuntimeError(
            f"apply_masks_: x of shape {tuple(x.shape)} and strides {x.stride()} cannot be viewed as "
            "(batch, before, units, after) in place; pass a contiguous (or channels-last) tensor"
        ) from exc


def reference_apply_masks_(x: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor, dim: int = 1) -> None:
    """The op's semantics in plain PyTorch (slow and obvious; the compiled op must match it)."""
    view = _unit_view(x, mask, fill, dim)
    rows_per_mask = x.shape[0] // mask.shape[0]
    ablated = mask.repeat_interleave(rows_per_mask, dim=0)[:, None, :, None]
    view.copy_(torch.where(ablated, fill[None, None, :, None], view))


def apply_masks_(x: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Ablate units of `x` in place for k masks at once; returns `x` for chaining."""
    global _warned
    if _backend_for(x.device.type) == "compiled":
        torch.ops.coar.apply_masks_(x, mask, fill, dim)
        return x
    if not _warned:
        reason = _LOAD_ERROR or f"it has no kernel for {x.device.type}"
        warnings.warn(f"coar: using the slower reference apply_masks_ because the compiled extension is unavailable ({reason})", stacklevel=2)
        _warned = True
    reference_apply_masks_(x, mask, fill, dim)
    return x
