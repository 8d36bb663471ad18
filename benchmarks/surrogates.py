"""Beyond linear COAR: surrogates with interactions against linear OLS and ridge, from a finished run.

Fits every estimator on the first m training masks of the run's dataset.h5 (for each m of
--masks), scores each on every held-out file of the run (heldout/alpha-*.h5) with coar's own
`coar.evaluate.score` (the evaluate step's mean correlation), prints a markdown table of the
mean held-out correlation and one of fit seconds, and writes
{"<estimator>": {"<masks>": {"<alpha>": mean correlation}}} to --json; with --plot, the same as
curves (mean held-out correlation against training masks, one panel per held-out alpha).

Estimators:
  ols, ridge            coar.solver.fit (ridge: penalty chosen per example on every 10th mask)
  pair-kernel           per-example linear part (unpenalised) plus kernel ridge on all pairwise
                        products x_i x_j (kernel ((x.x')^2 - x.x') / 2), one penalty for all
                        examples chosen on every 10th training mask
  pq-r5, pq-r10, pq-r20 coar.solver.surrogate.ProjectedQuadratic (rank r, penalty 10)
  pq-val                ProjectedQuadratic with rank in {5, 10, 20} and penalty in {1, 10, 100}
                        chosen on every 10th training mask, then refit on all m

Nothing is chosen on the held-out masks. Single-threaded (OMP_NUM_THREADS=1 and torch threads 1).

    python benchmarks/surrogates.py --run results/digits --json surrogates.json --plot surrogates.png
    python benchmarks/surrogates.py --run results/digits --json s.json --masks 1000 2000 4000 --only ols pq-r10
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402

from coar import h5format  # noqa: E402
from coar.evaluate import score  # noqa: E402
from coar.plots import figure, save_png  # noqa: E402
from coar.solver import VAL_EVERY, fit  # noqa: E402
from coar.solver.surrogate import ProjectedQuadratic  # noqa: E402

Predictor = Callable[[np.ndarray], np.ndarray]


def read_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    blocks = list(h5format.iter_chunks(path, 1 << 16))
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


def heldout_files(run: Path) -> dict[str, Path]:
    found = {}
    for path in (run / "heldout").glob("alpha-*.h5"):
        match = re.fullmatch(r"alpha-(.+)\.h5", path.name)
        if match:
            found[f"{float(match.group(1)):g}"] = path
    if not found:
        raise SystemExit(f"no held-out files {run / 'heldout' / 'alpha-*.h5'}: run the workflow's evaluate target first")
    return dict(sorted(found.items(), key=lambda kv: float(kv[0])))


def split(m: int) -> tuple[np.ndarray, np.ndarray]:
    val = np.arange(m) % VAL_EVERY == 0
    return ~val, val


def val_sse(predict: Predictor, X: np.ndarray, Y: np.ndarray) -> float:
    """Validation error with every example's outputs standardised (examples weigh the same)."""
    scale = np.where(Y.std(0) > 0, Y.std(0), 1.0)
    return float((((predict(X) - Y) / scale) ** 2).mean())


# -- estimators: each takes training (X, Y) and returns a predictor ----------------------------

def linear(method: str) -> Callable[[np.ndarray, np.ndarray], Predictor]:
    def fit_linear(X: np.ndarray, Y: np.ndarray) -> Predictor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # components never ablated in few masks
            result = fit((X, Y), method, backend="numpy")
        return lambda H: result.predict(H).astype(np.float64)
    return fit_linear


def _pair_kernel(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    d = A @ B.T
    return (d * d - d) / 2


def pair_kernel_at(X: np.ndarray, Y: np.ndarray, lam: float) -> Predictor:
    """y = [1, x] beta + K alpha, min |y - Z beta - K alpha|^2 + lam alpha' K alpha (beta unpenalised)."""
    X, Y = X.astype(np.float64), Y.astype(np.float64)
    Z = np.column_stack([np.ones(len(X)), X])
    factor = scipy.linalg.cho_factor(_pair_kernel(X, X) + lam * np.eye(len(X)))
    KiZ, KiY = scipy.linalg.cho_solve(factor, Z), scipy.linalg.cho_solve(factor, Y)
    beta = np.linalg.lstsq(Z.T @ KiZ, Z.T @ KiY, rcond=None)[0]
    alpha = scipy.linalg.cho_solve(factor, Y - Z @ beta)
    return lambda H: np.column_stack([np.ones(len(H)), H]) @ beta + _pair_kernel(H.astype(np.float64), X) @ alpha


def pair_kernel(X: np.ndarray, Y: np.ndarray) -> Predictor:
    tr, va = split(len(X))
    best = min((30.0, 300.0, 3000.0), key=lambda lam: val_sse(pair_kernel_at(X[tr], Y[tr], lam), X[va], Y[va]))
    return pair_kernel_at(X, Y, best)


def pq(rank: int, penalty: float = 10.0) -> Callable[[np.ndarray, np.ndarray], Predictor]:
    def fit_pq(X: np.ndarray, Y: np.ndarray) -> Predictor:
        return ProjectedQuadratic(rank, penalty).fit(X, Y).predict
    return fit_pq


def pq_val(X: np.ndarray, Y: np.ndarray) -> Predictor:
    tr, va = split(len(X))
    grid = [(r, p) for r in (5, 10, 20) for p in (1.0, 10.0, 100.0) if r <= min(X.shape[1], Y.shape[1])]
    rank, penalty = min(grid, key=lambda rp: val_sse(ProjectedQuadratic(*rp).fit(X[tr], Y[tr]).predict, X[va], Y[va]))
    print(f"    pq-val chose rank {rank}, penalty {penalty:g}")
    return ProjectedQuadratic(rank, penalty).fit(X, Y).predict


ESTIMATORS: dict[str, Callable[[np.ndarray, np.ndarray], Predictor]] = {
    "ols": linear("ols"),
    "ridge": linear("ridge"),
    "pair-kernel": pair_kernel,
    "pq-r5": pq(5),
    "pq-r10": pq(10),
    "pq-r20": pq(20),
    "pq-val": pq_val,
}


def table(results: dict, times: dict, alphas: list[str]) -> str:
    lines = ["| estimator | masks | " + " | ".join(f"alpha {a}" for a in alphas) + " | fit s |",
             "|---|---:|" + "---:|" * (len(alphas) + 1)]
    for name, by_m in results.items():
        for m, by_alpha in by_m.items():
            cells = " | ".join("undefined" if by_alpha[a] is None else f"{by_alpha[a]:.3f}" for a in alphas)
            lines.append(f"| {name} | {m} | {cells} | {times[name][m]:.1f} |")
    return "\n".join(lines)


def plot(results: dict, alphas: list[str], path: str | Path) -> None:
    """Mean held-out correlation against training masks, a line per estimator, a panel per alpha."""
    fig, axes = figure(figsize=(4.2 * len(alphas), 3.6), ncols=len(alphas), squeeze=False)
    for ax, alpha in zip(axes[0], alphas):
        for name, by_m in results.items():
            points = [(int(m), v[alpha]) for m, v in by_m.items() if v[alpha] is not None]
            ax.plot(*zip(*points), marker="o", label=name, linestyle="--" if name in ("ols", "ridge") else "-")
        ax.set_title(f"held-out alpha {alpha}")
        ax.set_xlabel("training masks")
    axes[0][0].set_ylabel("mean held-out correlation")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    save_png(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished run folder (dataset.h5 and heldout/alpha-*.h5)")
    parser.add_argument("--json", required=True, help="where to write the mean correlations")
    parser.add_argument("--masks", type=int, nargs="+", default=[1000, 2000, 4000],
                        help="training sizes m: the first m rows of dataset.h5 (larger ones than the run has are skipped)")
    parser.add_argument("--only", nargs="+", choices=list(ESTIMATORS), default=list(ESTIMATORS),
                        help="estimators to run (default: all)")
    parser.add_argument("--plot", help="also draw the curves to this PNG")
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    run = Path(args.run)
    masks, outputs, _ = h5format.read_dataset(run / "dataset.h5")
    heldout = {alpha: read_rows(path) for alpha, path in heldout_files(run).items()}
    example_ids = [str(i) for i in range(outputs.shape[1])]
    sizes = [m for m in args.masks if m <= len(masks)]
    if skipped := [m for m in args.masks if m > len(masks)]:
        print(f"skipping sizes {skipped}: the run has {len(masks)} training masks")
    print(f"{run}: {len(masks)} training masks x {masks.shape[1]} components, {outputs.shape[1]} examples; "
          f"held-out alphas {', '.join(heldout)}")
    results: dict[str, dict[str, dict[str, float | None]]] = {}
    times: dict[str, dict[str, float]] = {}
    for name in args.only:
        for m in sizes:
            start = time.perf_counter()
            predict = ESTIMATORS[name](masks[:m], outputs[:m])
            seconds = time.perf_counter() - start
            scores = {alpha: score(Y, predict(X), example_ids)["mean_correlation"] for alpha, (X, Y) in heldout.items()}
            results.setdefault(name, {})[str(m)] = scores
            times.setdefault(name, {})[str(m)] = seconds
            print(f"  {name:12s} m={m:6d} " + " ".join(f"{a}: {v:.4f}" for a, v in scores.items()) + f"  ({seconds:.1f} s)",
                  flush=True)
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print()
    print(table(results, times, list(heldout)))
    print(f"\nwritten: {args.json}")
    if args.plot:
        plot(results, list(heldout), args.plot)
        print(f"written: {args.plot}")


if __name__ == "__main__":
    main()
