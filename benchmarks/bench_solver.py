"""Benchmark of coar.solver against scikit-learn and against the matrix-product floor.

Not a test: prints one table of wall-clock times measured side by side in one run, on random
5% ablation masks with outputs from a planted linear model plus noise.

    python benchmarks/bench_solver.py            # m=20000 masks, N=2000 components, n=1000
    python benchmarks/bench_solver.py --small    # m=4000, N=400, n=200
    python benchmarks/bench_solver.py --masks 50000 --components 2304 --examples 500

Rows (each the best of --repeat runs; --threads caps BLAS threads for all rows alike):
- floor: the two products X'X and X'Y alone (inputs already converted), float32 and float64.
- ours: OLS; the ridge path (13 lambdas, per-example choice on 10% held-out masks, refit on
  all); lasso at one lambda (duality gap <= 1e-4 ||y - mean y||^2, scikit-learn's default);
  the lasso path (13 lambdas per example, tol 1e-7). All from the in-memory arrays, numpy.
- scikit-learn: LinearRegression and Ridge (one alpha) on float32 inputs (their fastest) and
  Ridge on float64 (our precision); RidgeCV with our 13 default alphas per target (it scores
  by leave-one-out instead of a holdout); Lasso at the same alpha and tolerance, timed on
  --lasso-targets targets and extrapolated linearly to all n (targets are independent fits).
- peak memory traced by tracemalloc while streaming statistics from generated chunks, at m/4
  and m masks: it does not grow with m.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.linear_model import Lasso, LinearRegression, Ridge, RidgeCV
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from coar.solver import GramStats, fit  # noqa: E402
from coar.solver.ridge import default_ridge_lambdas  # noqa: E402

ALPHA = 0.05  # ablation rate


def planted_problem(m: int, N: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks (m x N bool) and outputs (m x n float32) = X w + b + noise."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((N, n)).astype(np.float32) * 0.1
    X = np.empty((m, N), dtype=bool)
    Y = np.empty((m, n), dtype=np.float32)
    for start in range(0, m, 4096):
        stop = min(m, start + 4096)
        X[start:stop] = rng.random((stop - start, N)) < ALPHA
        Y[start:stop] = X[start:stop].astype(np.float32) @ W + 2.0
        Y[start:stop] += rng.standard_normal((stop - start, n)).astype(np.float32)
    return X, Y


def timed(fn: Callable[[], object], repeat: int = 1) -> tuple[float, object]:
    """Best wall-clock time of `repeat` calls, and the last result."""
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def streamed_peak(m: int, N: int, n: int, rows: int = 500, block_rows: int = 1000) -> float:
    """Peak traced MiB while streaming statistics from chunks generated on the fly."""

    def chunks():
        rng = np.random.default_rng(1)
        for start in range(0, m, rows):
            r = min(rows, m - start)
            yield rng.random((r, N)) < ALPHA, rng.standard_normal((r, n)).astype(np.float32)

    tracemalloc.start()
    GramStats.from_chunks(chunks(), backend="numpy", block_rows=block_rows)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="m=4000, N=400, n=200")
    parser.add_argument("--masks", type=int, default=20000)
    parser.add_argument("--components", type=int, default=2000)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--lasso-targets", type=int, default=10, help="sklearn Lasso subset")
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs per row")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads for every row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-slow", action="store_true", help="skip sklearn RidgeCV and Lasso")
    args = parser.parse_args()
    with threadpool_limits(args.threads):
        run(args)


def run(args: argparse.Namespace) -> None:
    m, N, n = (4000, 400, 200) if args.small else (args.masks, args.components, args.examples)
    threads = {i["internal_api"]: i["num_threads"] for i in threadpool_info()}
    print(f"m={m} masks, N={N} components, n={n} examples, ablation {ALPHA}, threads {threads}")
    X, Y = planted_problem(m, N, n, args.seed)
    Xf32, Xf64, Y64 = X.astype(np.float32), X.astype(np.float64), Y.astype(np.float64)
    with warnings.catch_warnings():  # warm-up (imports, thread pools) on too few masks
        warnings.simplefilter("ignore")
        fit((X[:200], Y[:200]), "ridge", backend="numpy")
    times: dict[str, float] = {}

    def row(
        name: str,
        fn: Callable[[], object],
        note: Callable[[object], str] = lambda _: "",
        scale: float = 1.0,
    ) -> object:
        seconds, out = timed(fn, args.repeat)
        times[name] = seconds * scale
        print(f"  {name:<48} {seconds * scale:8.2f} s  {note(out)}", flush=True)
        return out

    row("floor: X'X + X'Y float32", lambda: (Xf32.T @ Xf32, Xf32.T @ Y))
    row("floor: X'X + X'Y float64", lambda: (Xf64.T @ Xf64, Xf64.T @ Y64))

    ols = row("ours: OLS", lambda: fit((X, Y), "ols", backend="numpy"))
    row(
        "sklearn: LinearRegression (float32)",
        lambda: LinearRegression().fit(Xf32, Y),
        lambda sk: f"max|dw| / max|w| vs ours {relative_gap(ols.weight, sk.coef_):.1e}",
    )

    ridge = row(
        "ours: ridge path (13 lambdas, per example)",
        lambda: fit((X, Y), "ridge", backend="numpy"),
        lambda f: f"{np.unique(f.lam).size} distinct lambdas chosen",
    )
    lam = float(np.median(ridge.lam))
    row("sklearn: Ridge one alpha (float32)", lambda: Ridge(alpha=lam).fit(Xf32, Y))
    row("sklearn: Ridge one alpha (float64)", lambda: Ridge(alpha=lam).fit(Xf64, Y64))
    if not args.skip_slow:
        alphas = default_ridge_lambdas(GramStats.from_chunks([(X, Y)], backend="numpy"))
        row(
            f"sklearn: RidgeCV {alphas.size} alphas per target (LOO)",
            lambda: RidgeCV(alphas=alphas, alpha_per_target=True).fit(Xf32, Y),
        )

    lam_max = np.abs((Xf64 - Xf64.mean(0)).T @ (Y64 - Y64.mean(0))).max(0) / m
    lam = 0.05 * float(np.median(lam_max))
    tol = 1e-4  # scikit-learn's default duality-gap tolerance, relative to ||y - mean y||^2
    lasso = row(
        "ours: lasso one lambda",
        lambda: fit((X, Y), "lasso", lambdas=[lam], val_every=None, tol=tol, backend="numpy"),
        lambda f: f"{(f.weight != 0).mean():.0%} weights nonzero",
    )
    row("ours: lasso path (13 lambdas, per example)", lambda: fit((X, Y), "lasso", backend="numpy"))
    if not args.skip_slow:
        k = min(args.lasso_targets, n)
        row(
            f"sklearn: Lasso one alpha ({k} targets, x{n / k:g})",
            lambda: np.array([Lasso(alpha=lam, tol=tol).fit(Xf64, y).coef_ for y in Y64.T[:k]]),
            lambda sk: f"max|dw| / max|w| vs ours {relative_gap(lasso.weight[:k], sk):.1e}",
            scale=n / k,
        )

    print("\nsummary (ratios of times measured above)")
    ols, ridge_path = "ours: OLS", "ours: ridge path (13 lambdas, per example)"
    floor32, floor64 = "floor: X'X + X'Y float32", "floor: X'X + X'Y float64"
    ratios = [
        ("OLS / floor float32", ols, floor32),
        ("OLS / floor float64", ols, floor64),
        ("sklearn LinearRegression / OLS", "sklearn: LinearRegression (float32)", ols),
        ("ridge path / floor float32", ridge_path, floor32),
        ("ridge path / floor float64", ridge_path, floor64),
    ]
    if not args.skip_slow:
        sk_lasso = next(name for name in times if name.startswith("sklearn: Lasso"))
        ratios.append(("sklearn Lasso / lasso (one lambda)", sk_lasso, "ours: lasso one lambda"))
    print(f"| {'ratio':<46} | {'value':>7} |")
    print(f"|{'-' * 48}|{'-' * 9}|")
    for label, top, bottom in ratios:
        print(f"| {label:<46} | {times[top] / times[bottom]:>6.2f}x |")
    print(f"\npeak traced memory streaming statistics (500-row chunks, N={N}, n={n}):")
    for mm in (m // 4, m):
        print(f"  m={mm:>7}: {streamed_peak(mm, N, n):7.1f} MiB")


def relative_gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


if __name__ == "__main__":
    main()
