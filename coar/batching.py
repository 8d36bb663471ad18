"""Rows per forward pass: `max_batch: auto` and halving the pass on out-of-memory errors.

On a CPU `auto` is the default DEFAULT_MAX_BATCH (coar.constants: rows keep activations in cache; see
benchmarks/bench_forward.py). On a GPU, `auto` runs trial passes from a large batch down,
halving on out-of-memory or when a pass would use more than a fraction of the free memory.
During collection an out-of-memory error halves the examples per pass and retries the same
rows, so a job that guessed too big finishes instead of failing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch

from coar.constants import DEFAULT_MAX_BATCH

log = logging.getLogger(__name__)

GPU_START_ROWS = 1 << 16
GPU_MEMORY_FRACTION = 0.8  # margin: a pass may use at most this share of the memory free before it


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an accelerator out-of-memory error (and the CPU allocator's equivalent)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(exc)


def probe_rows(trial: Callable[[int], None], start: int) -> int:
    """The largest of start, start/2, ..., 1 rows for which `trial(rows)` runs without out-of-memory."""
    rows = max(1, start)
    while True:
        try:
            trial(rows)
            return rows
        except Exception as exc:
            if not is_out_of_memory(exc) or rows == 1:
                raise
            log.info("max_batch auto: %d rows ran out of memory; trying %d", rows, rows // 2)
            rows //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def auto_max_batch(model: torch.nn.Module, example: torch.Tensor, device: torch.device,
                   context: Callable[[], object] | None = None, start: int = GPU_START_ROWS) -> int:
    """Rows per pass for `max_batch: auto` on `device`, logged.

    CPU: DEFAULT_MAX_BATCH. CUDA: the largest power-of-two fraction of `start` rows (copies of
    `example`, one input row) whose trial pass fits, at most GPU_MEMORY_FRACTION of free memory.
    `context` makes the trial run as the collection will (e.g. autocast).
    """
    if device.type != "cuda":
        log.info("max_batch auto: %d rows per pass on %s (cache-friendly default)", DEFAULT_MAX_BATCH, device)
        return DEFAULT_MAX_BATCH

    def trial(rows: int) -> None:
        torch.cuda.synchronize(device)
        free, _ = torch.cuda.mem_get_info(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.inference_mode(), (context() if context else torch.autocast(device.type, enabled=False)):
            model(example[:1].expand(rows, *example.shape[1:]).contiguous())
        torch.cuda.synchronize(device)
        if torch.cuda.max_memory_allocated(device) - base > GPU_MEMORY_FRACTION * free:
            raise torch.OutOfMemoryError(f"a pass of {rows} rows uses more than {GPU_MEMORY_FRACTION:.0%} of free memory")

    rows = probe_rows(trial, start)
    log.info("max_batch auto: %d rows per pass on %s", rows, device)
    return rows


class PassSize:
    """Examples per pass that halve when a pass runs out of memory (kept for later mask blocks)."""

    def __init__(self, examples: int):
        self.examples = max(1, examples)

    def chunks(self, n: int, run: Callable[[int, int], torch.Tensor]) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(z0, z1, run(z0, z1)) over examples 0..n, retrying a chunk at half size on out-of-memory."""
        z0 = 0
        while z0 < n:
            z1 = min(n, z0 + self.examples)
            try:
                values = run(z0, z1)
            except Exception as exc:
                if not is_out_of_memory(exc) or z1 - z0 == 1:
                    raise
                self.examples = (z1 - z0) // 2
                log.warning("out of memory with %d examples per pass; continuing with %d", z1 - z0, self.examples)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            yield z0, z1, values
            z0 = z1


def resolve_max_batch(max_batch: int | str, model: torch.nn.Module, inputs: torch.Tensor, device: torch.device,
                      context: Callable[[], object] | None = None) -> int:
    """`max_batch` as rows per pass: an int as given, "auto" via `auto_max_batch`."""
    if max_batch == "auto":
        return auto_max_batch(model, inputs[:1].to(device), device, context)
    if isinstance(max_batch, str) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive integer or 'auto', got {max_batch!r}")
    return max_batch
