"""Sample efficiency of the estimators: held-out correlation against the number of masks m.

Reads a finished run (default: the embedded default run, `snakemake --cores 2` first), fits
OLS, ridge (lambda chosen per example) and lasso (lambda chosen per example) on the first m
training masks for m from about N/2 to 8N (as far as the run has masks), scores each on the
run's held-out masks at the training alpha, prints a table and saves a plot.

    python benchmarks/sample_efficiency.py --run-dir results/digits
    python benchmarks/sample_efficiency.py --run-dir results/tinylm_se   # a transformer (docs/results.md)
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from coar import h5format
from coar.evaluate import correlation
from coar.plots import figure, save_png
from coar.solver import fit

METHODS = ("ols", "ridge", "lasso")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="results/digits", help="a finished run folder")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.5, 1, 1.5, 2, 4, 8],
                        help="m as multiples of the number of components N")
    parser.add_argument("--out", default=None, help="plot path (default: <run-dir>/plots/sample_efficiency.png)")
    args = parser.parse_args()
    run = Path(args.run_dir)
    masks, outputs, attrs = h5format.read_dataset(run / "dataset.h5")
    alpha = float(json.loads((run / "evaluation.json").read_text())["alpha"])
    held = list(h5format.iter_chunks(run / "heldout" / f"alpha-{alpha:g}.h5", 1 << 16))
    held_x, held_y = np.concatenate([h[0] for h in held]), np.concatenate([h[1] for h in held])
    n_components = masks.shape[1]
    sizes = sorted({int(f * n_components) for f in args.fractions if int(f * n_components) <= len(masks)})
    print(f"N = {n_components} components, {outputs.shape[1]} examples, {len(held_x)} held-out masks at alpha {alpha:g}")
    print(f"{'m':>6} {'m/N':>5} " + " ".join(f"{m:>12}" for m in METHODS))
    table: dict[str, list[float]] = {m: [] for m in METHODS}
    for m in sizes:
        row = []
        for method in METHODS:
            if method == "ols" and m <= n_components:
                table[method].append(np.nan)
                row.append(f"{'(m <= N)':>12}")
                continue
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # components never ablated in few masks get weight 0
                result = fit((masks[:m], outputs[:m]), method)
            r = float(np.nanmean(correlation(held_y, result.predict(held_x))))
            table[method].append(r)
            row.append(f"{r:8.3f} {time.perf_counter() - start:3.0f}s")
        print(f"{m:>6} {m / n_components:>5.1f} " + " ".join(row))
    fig, ax = figure((6, 3.5))
    for method in METHODS:
        ax.plot(sizes, table[method], marker="o", label=method)
    ax.set_xscale("log")
    ax.set_xlabel("training masks m")
    ax.set_ylabel("mean held-out correlation")
    ax.set_title(f"{run.name}: N = {n_components} components, alpha = {alpha:g}")
    ax.grid(alpha=0.3)
    ax.legend()
    out = Path(args.out) if args.out else run / "plots" / "sample_efficiency.png"
    save_png(fig, out)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
