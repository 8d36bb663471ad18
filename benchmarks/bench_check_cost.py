"""Cost of the exactness checks of every `run_masked` call, against the passes they guard.

Per workload and k (masks per pass), side by side in one run:
- `checked` / `unchecked`: whole `run_masked` calls with and without the per-pass reach check
  (`check=False`), interleaved; `check` is the median paired ratio unchecked/checked minus 1,
  within this machine's timing noise when the check is cheap;
- the check alone (`Ablation.check_reached` after a pass that ablates every group), timed in
  isolation and printed as a share of one pass, since it is far below the noise of whole passes;
- the layout probe (`coar.exactness.probe_layout`: two forwards of 2 and 3 rows), paid once per
  `run_masked` call whatever the number of masks.

    python benchmarks/bench_check_cost.py --models digits resnet18 --ks 1 16 --n 200 --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from coar.ablation import Ablation
from coar.exactness import probe_layout
from coar.forward import run_masked
from coar.masks import sample_masks
from coar.outputs import margin
from coar.throughput import Workload, make_workload, paired_ratio, print_table, time_interleaved


def check_seconds(w: Workload, k: int, calls: int = 2000) -> float:
    """Seconds of one `check_reached` after a pass that ablates every group."""
    masks = torch.ones(k, len(w.components), dtype=torch.bool)
    with Ablation(w.model, w.components, masks) as ablation, torch.inference_mode():
        w.model(w.inputs[:1].repeat(k, *([1] * (w.inputs.dim() - 1))))
        start = time.perf_counter()
        for _ in range(calls):
            ablation.check_reached()
        return (time.perf_counter() - start) / calls


def probe_seconds(w: Workload, reps: int = 5) -> float:
    """Median seconds of the layout probe every `run_masked` call starts with."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        probe_layout(w.model, w.components, w.inputs[:2])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["digits", "resnet18"], choices=["digits", "resnet18"])
    p.add_argument("--ks", nargs="+", type=int, default=[1, 16], help="masks per pass")
    p.add_argument("--n", type=int, default=200, help="examples")
    p.add_argument("--masks", type=int, default=32, help="masks per timed run_masked call")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = []
    for name in args.models:
        w = make_workload(name, args.n, seed=0, device="cpu")
        probe = probe_seconds(w)
        for k in args.ks:
            masks = torch.from_numpy(sample_masks(0, 0, -(-args.masks // k) * k, len(w.components), args.alpha))

            def call(check: bool) -> None:
                run_masked(w.model, w.components, masks, w.inputs, w.labels, margin, masks_per_pass=k,
                           max_batch=k * args.n, check=check)

            seconds = time_interleaved({"checked": lambda: call(True), "unchecked": lambda: call(False)},
                                       args.reps, warmup=1)
            per_pass = statistics.median(seconds["checked"]) / (len(masks) // k)
            cost = check_seconds(w, k)
            lines.append([name, str(k), f"{1e6 * cost:.1f} us", f"{1e3 * per_pass:.1f} ms",
                          f"{100 * cost / per_pass:.4f}%",
                          f"{100 * (paired_ratio(seconds['unchecked'], seconds['checked']) - 1):+.1f}%",
                          f"{1e3 * probe:.0f} ms"])
    print_table(["model", "k", "check alone", "one pass", "check/pass", "unchecked/checked - 1", "probe per call"],
                lines)


if __name__ == "__main__":
    main()
