"""Throughput of batched ablated forward passes against the unmasked ceiling and the published method.

For each model and each k (masks per pass), one repetition evaluates `masks` ablation masks,
each ablating a random fraction alpha of all conv filters, on n examples, four ways:

- plain:     the unmasked model on the pre-repeated (k*n) batch, no hooks: the ceiling;
- compiled:  `coar.forward.run_masked` with the compiled `apply_masks_` op;
- reference: the same with the pure-PyTorch `reference_apply_masks_` patched in;
- published: per mask, deep-copy the model, zero the ablated weight rows, run the n examples.

With `--check-cost`, a fifth way, `unchecked` (`run_masked(..., check=False)`: no per-pass reach
check), is timed beside `compiled` (the `check` column: paired ratio, minus 1; within the timing
noise), the check itself is timed in isolation and printed as a fraction of a pass, and so is
the one-off `probe_layout` (two tiny forwards per `run_masked` call).

Throughput is in (examples x masks) per second. Repetitions are interleaved (one of each
method in turn) and ratios are medians of per-repetition ratios, so load from other processes
hits all methods alike. Before timing, the compiled and reference paths are checked against the
published one. Run `python benchmarks/bench_forward.py --help` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.models import resnet18

import coar.ablation
from coar.ablation import ablate_weights_
from coar.components import ComponentSet, discover
from coar.exactness import probe_layout
from coar.forward import run_masked
from coar.masks import sample_masks
from coar.ops import backend, reference_apply_masks_
from coar.outputs import margin
from coar.tasks.digits import DigitsResNet

METHODS = ("plain", "compiled", "reference", "published")
TARGET_VS_PLAIN = 0.90
TARGET_VS_PUBLISHED = 3.0
CHECK_RTOL = 1e-4


@dataclass
class Workload:
    """A model in eval mode with random weights, its conv-filter components and n inputs."""

    name: str
    model: nn.Module
    components: ComponentSet
    inputs: torch.Tensor
    labels: torch.Tensor


def _randomize_batchnorm_(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial statistics so an ablated filter's output (BN of 0) is not 0."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            m.weight.copy_(torch.rand(c, generator=generator) + 0.5)
            m.bias.copy_(torch.rand(c, generator=generator) - 0.5)


def make_workload(name: str, n: int, seed: int, device: torch.device) -> Workload:
    """`digits` (DigitsResNet, (n, 1, 8, 8)) or `resnet18` (10 classes, (n, 3, 32, 32)) on `device`."""
    torch.manual_seed(seed)
    if name == "digits":
        model, shape = DigitsResNet(), (1, 8, 8)
    elif name == "resnet18":
        model, shape = resnet18(num_classes=10), (3, 32, 32)
    else:
        raise ValueError(f"unknown model {name!r}")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        _randomize_batchnorm_(model, generator)
    model.eval().to(device)
    inputs = torch.randn(n, *shape, generator=generator).to(device)
    labels = torch.randint(0, 10, (n,), generator=generator).to(device)
    return Workload(name, model, discover(model, kinds=("conv",)), inputs, labels)


@contextlib.contextmanager
def reference_op() -> Iterator[None]:
    """Make `Ablation` use the pure-PyTorch op inside the block; restore the dispatcher after."""
    original = coar.ablation.apply_masks_

    def reference(x: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor, dim: int = 1) -> torch.Tensor:
        reference_apply_masks_(x, mask, fill, dim)
        return x

    coar.ablation.apply_masks_ = reference
    try:
        yield
    finally:
        coar.ablation.apply_masks_ = original


def plain(w: Workload, passes: int, k: int) -> Callable[[], None]:
    """`passes` unmasked forwards of the k*n batch, repeated once beforehand (the ceiling)."""
    x, y = w.inputs.repeat(k, 1, 1, 1), w.labels.repeat(k)

    def run() -> None:
        for _ in range(passes):
            margin(w.model(x), y).cpu().numpy()

    return run


def batched(w: Workload, masks: torch.Tensor, k: int, check: bool = True) -> np.ndarray:
    """The library path: all `masks`, k per pass, over all n examples in one chunk."""
    n = len(w.inputs)
    return run_masked(w.model, w.components, masks, w.inputs, w.labels, margin, masks_per_pass=k, max_batch=k * n,
                      check=check)


def check_seconds(w: Workload, k: int, calls: int = 2000) -> float:
    """Seconds of one per-pass reach check (`Ablation.check_reached`) after a pass that ablates every group.

    Measured in isolation, since its cost is far below the timing noise of whole passes.
    """
    masks = torch.ones(k, len(w.components), dtype=torch.bool)
    with coar.ablation.Ablation(w.model, w.components, masks) as ablation:
        w.model(w.inputs[:1].repeat(k, *([1] * (w.inputs.dim() - 1))))
        t0 = time.perf_counter()
        for _ in range(calls):
            ablation.check_reached()
        return (time.perf_counter() - t0) / calls


def probe_seconds(w: Workload, reps: int = 5) -> float:
    """Median seconds of the layout probe that every `run_masked` call starts with."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        probe_layout(w.model, w.components, w.inputs[:2])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def batched_reference(w: Workload, masks: torch.Tensor, k: int) -> np.ndarray:
    """`batched` with the reference op."""
    with reference_op():
        return batched(w, masks, k)


def published(w: Workload, masks: torch.Tensor) -> np.ndarray:
    """Per mask: deep-copy the model, zero the ablated rows, run the n examples in one batch."""
    out = np.empty((len(masks), len(w.inputs)), dtype=np.float32)
    for i, mask in enumerate(masks):
        edited = ablate_weights_(copy.deepcopy(w.model), w.components, mask)
        out[i] = margin(edited(w.inputs), w.labels).cpu().numpy()
    return out


def check(w: Workload, masks: torch.Tensor, k: int, n_published: int = 2) -> float:
    """Assert the batched outputs (both ops, k per pass) of the first masks equal the published ones.

    Returns the largest error relative to the outputs' scale.
    """
    expected = published(w, masks[:n_published])
    unablated = margin(w.model(w.inputs), w.labels).cpu().numpy()
    if np.abs(expected - unablated).max() <= 1e-2:
        raise AssertionError(f"{w.name}: ablation has no effect; the check would prove nothing")
    scale = float(np.abs(expected).max())
    errors = []
    for label, got in (("compiled", batched(w, masks, k)), ("reference", batched_reference(w, masks, k))):
        err = float(np.abs(got[:n_published] - expected).max()) / scale
        if err > CHECK_RTOL:
            raise AssertionError(f"{w.name} k={k}: {label} batched outputs differ from published by {err:.3g} relative")
        errors.append(err)
    return max(errors)


def time_interleaved(runs: dict[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each run, `reps` rounds of one call each in turn, after `warmup` rounds.

    The heap is frozen first: a full garbage collection scans every object the imports made
    (~0.2 s here) and would land on whichever run happens to trigger it (mostly `published`,
    whose deep copies allocate many objects).
    """
    gc.collect()
    gc.freeze()
    for _ in range(warmup):
        for run in runs.values():
            run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(reps):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - t0)
    return seconds


@dataclass
class Row:
    """One (model, k) measurement: seconds per repetition of `masks` masks x `n` examples, per method."""

    model: str
    k: int
    masks: int
    n: int
    seconds: dict[str, list[float]]

    def throughput(self, method: str) -> float:
        """Median (examples x masks) per second."""
        return self.masks * self.n / statistics.median(self.seconds[method])

    def ratio(self, num: str, den: str) -> float:
        """Median over repetitions of throughput(num) / throughput(den), from paired timings."""
        return statistics.median(d / s for s, d in zip(self.seconds[num], self.seconds[den]))

    def spread(self) -> float:
        """Largest (max - min) / median over the methods' timings: a noise indicator."""
        return max((max(s) - min(s)) / statistics.median(s) for s in self.seconds.values())


def bench(w: Workload, k: int, n_masks: int, alpha: float, reps: int, warmup: int, seed: int,
          check_cost: bool = False) -> Row:
    """Check, then time the four methods on `n_masks` masks (rounded up to a multiple of k), k per pass."""
    n_masks = -(-n_masks // k) * k
    masks = torch.from_numpy(sample_masks(seed, k, n_masks, len(w.components), alpha))
    err = check(w, masks, k)
    print(f"  {w.name} k={k}: batched outputs (both ops) match published to {err:.1g} relative; timing", flush=True)
    runs = {
        "plain": plain(w, n_masks // k, k),
        "compiled": lambda: batched(w, masks, k),
        "reference": lambda: batched_reference(w, masks, k),
        "published": lambda: published(w, masks),
    }
    if check_cost:
        runs["unchecked"] = lambda: batched(w, masks, k, check=False)
    row = Row(w.name, k, n_masks, len(w.inputs), time_interleaved(runs, reps, warmup))
    if check_cost:
        per_pass = statistics.median(row.seconds["compiled"]) / (n_masks // k)
        cost = check_seconds(w, k)
        print(f"  {w.name} k={k}: per-pass check {1e6 * cost:.1f} us = {100 * cost / per_pass:.4f}% of a pass "
              f"({1e3 * per_pass:.1f} ms)", flush=True)
    return row


def _rate(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k"


def _ratio(x: float, target: float | None = None) -> str:
    mark = "" if target is None else (" ok" if x >= target else " MISS")
    return f"{x:.2f}{mark}"


def print_table(rows: list[Row]) -> None:
    """Throughputs, ratios (marked against the targets) and spread, one line per row."""
    cost = all("unchecked" in r.seconds for r in rows)
    header = ["model", "k", "masks", *METHODS, "comp/plain", "comp/pub", "ref/plain", *(["check"] if cost else []), "spread"]
    lines = [
        [
            r.model, str(r.k), str(r.masks), *(_rate(r.throughput(m)) for m in METHODS),
            _ratio(r.ratio("compiled", "plain"), TARGET_VS_PLAIN),
            _ratio(r.ratio("compiled", "published"), TARGET_VS_PUBLISHED),
            _ratio(r.ratio("reference", "plain")),
            *([f"{100 * (r.ratio('unchecked', 'compiled') - 1):+.2f}%"] if cost else []),
            f"{100 * r.spread():.0f}%",
        ]
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(header, *lines)]
    for line in [header, *lines]:
        print("  ".join(c.rjust(wd) if i else c.ljust(wd) for i, (c, wd) in enumerate(zip(line, widths))))
    print(
        f"throughput in (examples x masks)/s, medians; ratios: medians of paired per-repetition ratios; "
        f"targets comp/plain >= {TARGET_VS_PLAIN}, comp/pub >= {TARGET_VS_PUBLISHED}; "
        "spread: largest (max-min)/median of a method's timings"
        + ("; check: time of the per-pass reach check, as a fraction of the checked pass "
           "(median of paired ratios unchecked/compiled throughput, minus 1)" if cost else "")
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `--quick` overrides the sizes."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke test: n=64, k in {1, 4}, 2 masks, 2 repetitions")
    p.add_argument("--models", nargs="+", choices=("digits", "resnet18"), default=["digits", "resnet18"])
    p.add_argument("--n", type=int, default=400, help="examples")
    p.add_argument("--digits-k", type=int, nargs="+", default=[1, 4, 16], help="masks per pass for the digits CNN")
    p.add_argument("--resnet-k", type=int, nargs="+", default=[1, 4], help="masks per pass for resnet18")
    p.add_argument("--digits-masks", type=int, default=16, help="masks per repetition (rounded up to a multiple of k)")
    p.add_argument("--resnet-masks", type=int, default=1, help="masks per repetition (rounded up to a multiple of k)")
    p.add_argument("--alpha", type=float, default=0.05, help="fraction of conv filters ablated per mask")
    p.add_argument("--reps", type=int, default=11, help="timed repetitions per method")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1 is steadiest on a shared machine)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-cost", action="store_true", help="also time run_masked without the per-pass reach check")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.digits_k, args.resnet_k = 64, [1, 4], [1, 4]
        args.digits_masks = args.resnet_masks = 2
        args.reps, args.warmup = 2, 0
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if backend(device) != "compiled":
        raise SystemExit(f"coar's compiled op is not available on {device}: there is nothing to benchmark")
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__} on {device}, torch.get_num_threads() = {torch.get_num_threads()}, "
        f"n = {args.n}, alpha = {args.alpha}, {args.reps} repetitions after {args.warmup} warm-up"
    )
    rows = []
    with torch.inference_mode():
        for name in args.models:
            w = make_workload(name, args.n, args.seed, device)
            print(f"{name}: {len(w.components)} conv filters; layout probe {1e3 * probe_seconds(w):.1f} ms per run_masked call")
            ks, n_masks = (args.digits_k, args.digits_masks) if name == "digits" else (args.resnet_k, args.resnet_masks)
            for k in ks:
                rows.append(bench(w, k, n_masks, args.alpha, args.reps, args.warmup, args.seed, args.check_cost))
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
