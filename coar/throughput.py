"""Throughput measurement shared by `coar selfcheck` and benchmarks/bench_forward.py.

Workloads are real architectures with random weights (BatchNorm statistics randomized so an
ablated filter's output, BN of its fill, is not trivially 0). Timings are interleaved (one call
of each method in turn) and ratios are medians of paired per-repetition ratios, so load from
other processes hits all methods alike.
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from coar.ablation import ablate_weights_
from coar.components import ComponentSet, discover
from coar.outputs import margin
from coar.precision import autocast

WORKLOADS = {"digits": (1, 8, 8), "resnet18": (3, 32, 32), "resnet50": (3, 224, 224)}


@dataclass
class Workload:
    """A model in eval mode with random weights, its conv-filter components and n inputs with labels."""

    name: str
    model: nn.Module
    components: ComponentSet
    inputs: torch.Tensor
    labels: torch.Tensor


def randomize_batchnorm_(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(c, generator=generator) - 0.5)


def make_workload(name: str, n: int, seed: int, device: torch.device | str) -> Workload:
    """`digits` (DigitsResNet, 8x8), `resnet18` (32x32) or `resnet50` (224x224), 10 classes, on `device`."""
    from torchvision.models import resnet18, resnet50

    from coar.tasks.digits import DigitsResNet

    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose from {list(WORKLOADS)}")
    torch.manual_seed(seed)
    model = {"digits": DigitsResNet, "resnet18": lambda: resnet18(num_classes=10),
             "resnet50": lambda: resnet50(num_classes=10)}[name]()
    generator = torch.Generator().manual_seed(seed)
    randomize_batchnorm_(model, generator)
    model.eval().to(device)
    inputs = torch.randn(n, *WORKLOADS[name], generator=generator).to(device)
    labels = torch.randint(0, 10, (n,), generator=generator).to(device)
    return Workload(name, model, discover(model, kinds=("conv",)), inputs, labels)


@torch.inference_mode()
def published(w: Workload, masks: torch.Tensor, amp: bool = False) -> np.ndarray:
    """The published method: per mask, deep-copy the model, zero the ablated rows, run the n examples.

    `amp` runs the pass under fp16 autocast, as the published code does on CUDA.
    """
    out = np.empty((len(masks), len(w.inputs)), dtype=np.float32)
    device = w.inputs.device
    for i, mask in enumerate(masks):
        edited = ablate_weights_(copy.deepcopy(w.model), w.components, mask)
        with autocast("fp16" if amp else "fp32", device):
            out[i] = margin(edited(w.inputs), w.labels).float().cpu().numpy()
    return out


def plain(model: nn.Module, w: Workload, k: int, passes: int, precision: str = "fp32") -> Callable[[], None]:
    """`passes` unmasked forwards of the k*n batch (repeated once beforehand): the ceiling."""
    x, y = w.inputs.repeat(k, *([1] * (w.inputs.dim() - 1))), w.labels.repeat(k)

    @torch.inference_mode()
    def run() -> None:
        with autocast(precision, x.device):
            for _ in range(passes):
                margin(model(x), y).cpu().numpy()

    return run


def time_interleaved(runs: dict[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each run: `reps` rounds of one call each in turn, after `warmup` rounds.

    The heap is frozen first: a full garbage collection scans every object the imports made and
    would land on whichever run triggers it (mostly the published method's deep copies).
    """
    gc.collect()
    gc.freeze()
    try:
        for _ in range(warmup):
            for run in runs.values():
                run()
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(reps):
            for name, run in runs.items():
                t0 = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - t0)
    finally:
        gc.unfreeze()
    return seconds


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over repetitions of throughput(num) / throughput(den) = den seconds / num seconds."""
    return statistics.median(d / s for s, d in zip(num, den))


def rate(x: float) -> str:
    """A throughput as text: 1.23M or 45.6k."""
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k"


def print_table(header: list[str], lines: list[list[str]]) -> None:
    """Right-aligned columns, the first left-aligned."""
    widths = [max(len(c) for c in col) for col in zip(header, *lines)]
    for line in [header, *lines]:
        print("  ".join(c.rjust(wd) if i else c.ljust(wd) for i, (c, wd) in enumerate(zip(line, widths))), flush=True)
