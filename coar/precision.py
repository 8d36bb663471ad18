"""Mixed precision of the ablated forward passes: `precision: fp32 | bf16 | fp16`.

Low precision runs the model under `torch.autocast` (as the published collection does on
GPUs with fp16); the mask op then sees bfloat16/float16 activations and writes each unit's
fill rounded to that dtype. Outputs are stored as float32 whatever the precision.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import ContextManager

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CPU_INSTRUCTIONS = {"bf16": {"avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported"},
                    "fp16": {"amx_fp16": "_is_amx_fp16_supported"}}
"""The instructions that run each low precision natively on a CPU, and torch.cpu's probe of each."""


def cpu_runs_natively(precision: str) -> bool:
    """Whether this CPU has instructions for `precision`'s matrix products (AVX512-BF16 or AMX).
    Without them torch emulates the dtype: passes measured 5-6x slower than fp32 on an AVX2
    CPU (docs/performance.md)."""
    probes = [getattr(torch.cpu, name, None) for name in CPU_INSTRUCTIONS.get(precision, {}).values()]
    return any(probe() for probe in probes if probe is not None)


def check_precision(precision: str, device: str | torch.device) -> None:
    """Refuse a precision that autocast cannot run on `device`, before any expensive work.

    A one-matmul trial under autocast must produce the requested dtype (autocast silently
    disables itself, with a warning only, for dtypes a device does not support).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")
    if precision == "fp32":
        return
    device = torch.device(device)
    dtype = _DTYPES[precision]
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"precision {precision!r}: torch has no autocast for device {device.type!r}; use precision: fp32")
    a = torch.ones(2, 2, device=device)
    try:
        with torch.autocast(device.type, dtype=dtype), torch.no_grad():
            got = (a @ a).dtype
    except RuntimeError as exc:
        raise ValueError(f"precision {precision!r} is not supported on {device.type}: {exc}; use precision: fp32") from exc
    if got != dtype:
        raise ValueError(
            f"precision {precision!r} is not supported on {device.type}: autocast ran a matmul in {got}; use precision: fp32"
        )
    if device.type == "cpu" and not cpu_runs_natively(precision):
        # a warning, not a log line: Python shows it once per process, however many passes check
        warnings.warn(f"coar: precision {precision} on a CPU without {' or '.join(CPU_INSTRUCTIONS[precision])} "
                      f"instructions (torch CPU capability {torch.backends.cpu.get_cpu_capability()}): torch emulates "
                      "it, and the passes may be several times slower than fp32 (docs/performance.md); precision: "
                      "fp32 is faster here", stacklevel=1)


def autocast(precision: str, device: str | torch.device) -> ContextManager:
    """The context the ablated forward passes run in: autocast to bf16/fp16, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])
