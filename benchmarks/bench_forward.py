"""Throughput of ablated forward passes: coar's fast path against the published method and the plain forward.

For each model and each k (masks per pass), one repetition evaluates `masks` ablation masks,
each ablating a random fraction alpha of all conv filters, on n examples, five ways:

- plain:     the unmasked eager model, fp32, on the pre-repeated (k*n) batch, no hooks;
- batched:   `coar.forward.run_masked` on the eager model, fp32 (k masks per pass);
- fast32:    run_masked with the fast path (coar.fastpath: BatchNorm folding, channels_last,
             torch.compile), fp32;
- fast16:    the same under bf16 autocast (`precision: bf16`);
- published: per mask, deep-copy the model, zero the ablated weight rows, run the n examples in
             fp32 (the published code's autocast is CUDA-only).

Throughput is in (examples x masks) per second. Repetitions are interleaved (one of each
method in turn) and ratios are medians of per-repetition ratios, so load from other processes
hits all methods alike. Before timing, every coar path is checked against the published one
(fp32 paths to 1e-4 relative, bf16 to 5e-2). Run `python benchmarks/bench_forward.py --help`.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass

import numpy as np
import torch

from coar.ablation import unit_fills
from coar.fastpath import FastPath, prepare
from coar.forward import run_masked
from coar.masks import sample_masks
from coar.ops import backend
from coar.outputs import margin
from coar.throughput import Workload, make_workload, paired_ratio, plain, print_table, published, rate, time_interleaved

METHODS = ("plain", "batched", "fast32", "fast16", "published")
TARGET_VS_PLAIN = 0.90
TARGET_VS_PUBLISHED = 3.0
TOLERANCE = {"batched": 1e-4, "fast32": 1e-4, "fast16": 5e-2}


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
        return paired_ratio(self.seconds[num], self.seconds[den])

    def spread(self) -> float:
        """Largest (max - min) / median over the methods' timings: a noise indicator."""
        return max((max(s) - min(s)) / statistics.median(s) for s in self.seconds.values())


def bench(w: Workload, k: int, n_masks: int, alpha: float, reps: int, warmup: int, seed: int, fast: FastPath) -> Row:
    """Check every coar path against the published method, then time the five methods."""
    n_masks = -(-n_masks // k) * k
    n = len(w.inputs)
    masks = torch.from_numpy(sample_masks(seed, k, n_masks, len(w.components), alpha))
    fills = unit_fills(w.model, w.components)
    fast_model = prepare(w.model, w.components, fills, fast)

    def coar(model, model_fills, precision):
        return lambda: run_masked(model, w.components, masks, w.inputs, w.labels, margin, masks_per_pass=k,
                                  max_batch=k * n, fills=model_fills, precision=precision)

    runs = {
        "plain": plain(w.model, w, k, n_masks // k),
        "batched": coar(w.model, fills, "fp32"),
        "fast32": coar(fast_model.model, fast_model.fills, "fp32"),
        "fast16": coar(fast_model.model, fast_model.fills, "bf16"),
        "published": lambda: published(w, masks),
    }
    expected = published(w, masks[:2])
    if np.abs(expected - margin(w.model(w.inputs), w.labels).cpu().numpy()).max() <= 1e-2:
        raise AssertionError(f"{w.name}: ablation has no effect; the check would prove nothing")
    scale = float(np.abs(expected).max())
    errors = {}
    for name, tol in TOLERANCE.items():
        errors[name] = float(np.abs(runs[name]()[:2] - expected).max()) / scale  # also compiles the fast path
        if errors[name] > tol:
            raise AssertionError(f"{w.name} k={k}: {name} differs from published by {errors[name]:.3g} relative")
    print(f"  {w.name} k={k}: match published to " + ", ".join(f"{m} {e:.1g}" for m, e in errors.items())
          + f" relative ({len(fast_model.folded)} BatchNorms folded); timing", flush=True)
    return Row(w.name, k, n_masks, n, time_interleaved(runs, reps, warmup))


def _ratio(x: float, target: float | None = None) -> str:
    mark = "" if target is None else (" ok" if x >= target else " MISS")
    return f"{x:.2f}{mark}"


def report(rows: list[Row]) -> None:
    """Throughputs, ratios (marked against the targets) and spread, one line per row."""
    header = ["model", "k", "masks", *METHODS, "fast16/pub", "fast32/pub", "batched/plain", "fast16/plain", "spread"]
    lines = [
        [r.model, str(r.k), str(r.masks), *(rate(r.throughput(m)) for m in METHODS),
         _ratio(r.ratio("fast16", "published"), TARGET_VS_PUBLISHED), _ratio(r.ratio("fast32", "published")),
         _ratio(r.ratio("batched", "plain"), TARGET_VS_PLAIN), _ratio(r.ratio("fast16", "plain")),
         f"{100 * r.spread():.0f}%"]
        for r in rows
    ]
    print_table(header, lines)
    print(f"throughput in (examples x masks)/s, medians; ratios: medians of paired per-repetition ratios; targets "
          f"fast16/pub >= {TARGET_VS_PUBLISHED}, batched/plain >= {TARGET_VS_PLAIN}; spread: largest (max-min)/median")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `--quick` overrides the sizes."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: n=64, k in {1, 4}, 4 masks, 2 repetitions, no compile")
    p.add_argument("--models", nargs="+", choices=("digits", "resnet18"), default=["digits", "resnet18"])
    p.add_argument("--n", type=int, default=400, help="examples")
    p.add_argument("--digits-k", type=int, nargs="+", default=[1, 4], help="masks per pass for the digits CNN")
    p.add_argument("--resnet-k", type=int, nargs="+", default=[1], help="masks per pass for resnet18")
    p.add_argument("--digits-masks", type=int, default=16, help="masks per repetition (rounded up to a multiple of k)")
    p.add_argument("--resnet-masks", type=int, default=2, help="masks per repetition (rounded up to a multiple of k)")
    p.add_argument("--alpha", type=float, default=0.05, help="fraction of conv filters ablated per mask")
    p.add_argument("--reps", type=int, default=7, help="timed repetitions per method")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1 is steadiest on a shared machine)")
    p.add_argument("--no-compile", action="store_true", help="fast path without torch.compile")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.digits_k, args.resnet_k = 64, [1, 4], [1]
        args.digits_masks = args.resnet_masks = 4
        args.reps, args.warmup, args.no_compile = 2, 0, True
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if backend(device) != "compiled":
        raise SystemExit(f"coar's compiled op is not available on {device}: there is nothing to benchmark")
    torch.set_num_threads(args.threads)
    fast = FastPath(compile=not args.no_compile)
    print(f"torch {torch.__version__} on {device}, torch.get_num_threads() = {torch.get_num_threads()}, n = {args.n}, "
          f"alpha = {args.alpha}, {args.reps} repetitions after {args.warmup} warm-up; fast path: {fast}")
    rows = []
    with torch.inference_mode():
        for name in args.models:
            w = make_workload(name, args.n, args.seed, device)
            print(f"{name}: {len(w.components)} conv filters")
            ks, n_masks = (args.digits_k, args.digits_masks) if name == "digits" else (args.resnet_k, args.resnet_masks)
            for k in ks:
                rows.append(bench(w, k, n_masks, args.alpha, args.reps, args.warmup, args.seed, fast))
    print()
    report(rows)


if __name__ == "__main__":
    main()
