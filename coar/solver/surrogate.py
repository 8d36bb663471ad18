"""Beyond linear COAR: a surrogate with interactions shared across examples.

`ProjectedQuadratic` models every example's ablated output as its linear COAR model plus a
quadratic form in a few projections of the mask that all examples share:

    f(z, x) ~ w(z) @ x + b(z) + sum_{a <= c} q(z)[a, c] * (x @ P[:, a]) * (x @ P[:, c])

P (N x r) holds the top r left singular vectors of the OLS weights (each example's column scaled
by its output's standard deviation), i.e. the directions in component space along which the
examples' attributions vary most. The interactions between components are then those of r
shared "pathways" (for a classifier's margin, roughly the logits that compete for the top
class), so each example gains only r (r + 1) / 2 coefficients, and the design [x, quad(x @ P)]
is shared by all examples: the second stage is one multi-output least-squares problem, linear
part unpenalised (like OLS), quadratic part ridge-penalised on standardised features.

On the digits run (352 conv filters, 360 examples) it raised the mean held-out correlation
from 0.897 / 0.901 / 0.842 to about 0.937 / 0.939 / 0.890 at alpha 0.05 / 0.1 / 0.2 with 4,000
masks, and beat linear COAR's 4,000-mask score with 1,000 masks (docs/results.md, "Beyond
linear: surrogates"; benchmarks/surrogates.py).

Deterministic (no random numbers: an SVD, its signs fixed, and a Cholesky solve), numpy in float64,
single-threaded BLAS by default (`threads`). `fit` holds the masks in memory; `fit_chunks` streams
them in row chunks (two passes) given the OLS weights already fitted, in memory
O((N + r (r + 1) / 2)^2 + (N + r (r + 1) / 2) n) whatever the number of masks, and gives the same
coefficients up to float rounding (`fit` is `fit_chunks` on one chunk after its own OLS).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .estimators import fit as linear_fit


class ProjectedQuadratic:
    """Per-example linear model plus a quadratic form in `rank` shared projections of the mask.

    rank: number of shared projections r (at most min(N, n)); the quadratic part has
        r (r + 1) / 2 coefficients per example. 10 did best on the digits run; choose it on a
        split of the training masks (benchmarks/surrogates.py does).
    penalty: ridge penalty on the standardised quadratic features (scikit-learn units: added to
        the diagonal of their centred Gram matrix); the linear part is never penalised.
    threads: BLAS threads during fit and predict (None: leave the process's setting alone).

    After `fit`: basis_ (N, r), weight_ (n, N) linear part, quad_ (n, r (r + 1) / 2) quadratic
    coefficients in the raw (unstandardised) features, bias_ (n,), n_masks_.
    """

    def __init__(self, rank: int = 10, penalty: float = 10.0, threads: int | None = 1) -> None:
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        if not (isinstance(penalty, (int, float, np.floating)) and np.isfinite(penalty) and penalty >= 0):
            raise ValueError(f"penalty must be a finite number >= 0, got {penalty!r}")
        self.rank = int(rank)
        self.penalty = float(penalty)
        self.threads = threads

    # -- scikit-learn-style API -------------------------------------------------------------

    def fit(self, masks: Any, outputs: Any) -> ProjectedQuadratic:
        """Fit on masks (m x N, 0/1 or bool, 1 = ablated) and outputs (m x n, one column per example)."""
        X, Y = _check_fit_data(masks, outputs)
        m, N = X.shape
        self.check_sizes(N, Y.shape[1])
        _check_counts(m, X.max(0) > X.min(0))
        with _threads(self.threads):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # constant components: reported by _fit_passes
                ols = linear_fit((X, Y), "ols", backend="numpy")
            return self._fit_passes(lambda: [(X, Y)], ols.weight)

    def fit_chunks(self, chunks: Callable[[], Iterable[tuple[Any, Any]]] | Iterable[tuple[Any, Any]],
                   ols_weight: Any) -> ProjectedQuadratic:
        """Fit from (masks, outputs) row chunks, given the per-example linear weights (n x N) whose
        top singular vectors give the basis: the OLS of the same rows reproduces `fit` (up to float
        rounding, whatever the chunk sizes); another estimator's weights (ridge, lasso) give a basis
        of their own.

        chunks: a function returning a fresh iterable of chunks (such as coar.h5format.RowReader),
            or a re-iterable collection of them: the fit reads the rows twice (the outputs' standard
            deviations scale the basis, which the second pass's features need). Memory is the
            (N + r (r + 1) / 2)-square Gram matrix, its cross products with the n outputs and
            one chunk, never all rows.
        """
        if not callable(chunks):
            if iter(chunks) is chunks:
                raise ValueError("chunks must be re-iterable (a list, or a function returning a fresh iterator): "
                                 "the fit reads the rows twice, and an iterator is spent after one pass")
            collection = chunks
            chunks = lambda: collection  # noqa: E731
        with _threads(self.threads):
            return self._fit_passes(chunks, ols_weight)

    def check_sizes(self, N: int, n: int, masks: int | None = None) -> None:
        """Refuse what N components, n examples and (when given) a budget of `masks` cannot fit:
        a rank the basis cannot have, or too few masks for the unpenalised linear part. Called
        before any masks are collected, where the sizes are known first (coar.attribute, the
        workflow's checks), and again by the fit."""
        if self.rank > min(N, n):
            raise ValueError(
                f"rank {self.rank} exceeds min(components, examples) = min({N}, {n}): the basis comes "
                f"from the {N} x {n} OLS weights, which have at most {min(N, n)} directions"
            )
        if masks is not None and masks <= N + 1:
            raise ValueError(
                f"{masks} masks cannot determine the unpenalised linear part of {N} components and a "
                f"bias: the surrogate needs more masks than components + 1, at least {N + 2}"
            )

    def _fit_passes(self, chunks: Callable[[], Iterable[tuple[Any, Any]]], ols_weight: Any) -> ProjectedQuadratic:
        """The fit from two passes over the chunks: (1) row count, the outputs' means and spreads
        (merged chunk by chunk, Chan et al.) and which components vary; (2) shifted raw sums of the
        features [x, quad(x P)] and of their products with each other and with the outputs,
        centred at the end. With one chunk the shift is its mean: the sums are centred exactly."""
        W = np.asarray(ols_weight, dtype=np.float64)
        first = _first_pass(chunks)
        m, N, n = first.m, first.x_min.size, first.y_mean.size
        if W.shape != (n, N):
            raise ValueError(f"ols_weight must be (examples x components) = ({n}, {N}) for these rows, got {W.shape}")
        if not np.all(np.isfinite(W)):
            raise ValueError("ols_weight holds NaN or infinite values")
        self.check_sizes(N, n)
        varies = first.x_max > first.x_min
        _check_counts(m, varies)
        active = _active(varies)
        scale = np.sqrt(first.y_m2 / m)
        self.basis_ = _basis(W, np.where(scale > 0, scale, 1.0), self.rank)

        k = active.size
        n_features = k + _n_pairs(self.rank)
        shift = None
        s_f, s_y = np.zeros(n_features), np.zeros(n)
        s_ff, s_fy = np.zeros((n_features, n_features)), np.zeros((n_features, n))
        rows = 0
        for masks, outputs in chunks():
            X, Y = np.asarray(masks, dtype=np.float64), np.asarray(outputs, dtype=np.float64)
            F = np.concatenate([X[:, active], _pairs(X @ self.basis_)], axis=1)
            if shift is None:
                shift = F.mean(0)
            F -= shift
            Y = Y - first.y_mean
            s_f += F.sum(0)
            s_y += Y.sum(0)
            s_ff += F.T @ F
            s_fy += F.T @ Y
            rows += len(X)
        if rows != m:
            raise ValueError(f"the chunks held {m} rows on the first pass but {rows} on the second: they must give "
                             "the same rows each time they are read")
        d, e = s_f / m, s_y / m
        gram = s_ff - m * np.outer(d, d)
        cross = s_fy - m * np.outer(d, e)
        f_mean, y_mean = shift + d, first.y_mean + e

        # Quadratic features standardised (as fit's scikit-learn units for the penalty), linear ones not.
        q_std = np.sqrt(np.maximum(np.diag(gram)[k:], 0.0) / m)
        q_std = np.where(q_std > 0, q_std, 1.0)
        unit = np.concatenate([np.ones(k), q_std])
        gram = gram / unit[:, None] / unit[None, :]
        cross = cross / unit[:, None]
        gram[np.arange(k, n_features), np.arange(k, n_features)] += self.penalty
        gram[np.arange(n_features), np.arange(n_features)] += 1e-10 * np.trace(gram) / n_features
        import scipy.linalg  # here: coar.solver is imported by the workflow at every start-up

        coef = scipy.linalg.cho_solve(scipy.linalg.cho_factor(gram), cross)

        self.weight_ = np.zeros((n, N))
        self.weight_[:, active] = coef[:k].T
        self.quad_ = (coef[k:] / q_std[:, None]).T
        self.bias_ = y_mean - f_mean[:k] @ coef[:k] - f_mean[k:] @ self.quad_.T
        self.n_masks_ = m
        return self

    @classmethod
    def from_fitted(cls, basis: Any, weight: Any, quad: Any, bias: Any, *, rank: int, penalty: float,
                    n_masks: int, threads: int | None = 1) -> ProjectedQuadratic:
        """A fitted surrogate from its arrays (as stored in a run's surrogate.h5, coar.h5format)."""
        model = cls(rank, penalty, threads)
        model.basis_, model.weight_, model.quad_, model.bias_ = (np.asarray(a, dtype=np.float64)
                                                                 for a in (basis, weight, quad, bias))
        N, n = model.basis_.shape[0], model.bias_.shape[0]
        wanted = {"basis": (N, rank), "weight": (n, N), "quad": (n, _n_pairs(rank)), "bias": (n,)}
        found = {"basis": model.basis_.shape, "weight": model.weight_.shape, "quad": model.quad_.shape,
                 "bias": model.bias_.shape}
        if found != wanted:
            raise ValueError(f"a rank-{rank} surrogate of {N} components and {n} examples needs arrays {wanted}, "
                             f"got {found}")
        model.n_masks_ = int(n_masks)
        return model

    def predict(self, masks: Any) -> np.ndarray:
        """Predicted outputs (rows x n) for masks (rows x N)."""
        if not hasattr(self, "basis_"):
            raise RuntimeError("this ProjectedQuadratic is not fitted yet: call fit(masks, outputs) first")
        X = _as_masks(masks, "masks")
        if X.shape[1] != self.basis_.shape[0]:
            raise ValueError(
                f"masks have {X.shape[1]} columns but the surrogate was fit on {self.basis_.shape[0]} components"
            )
        with _threads(self.threads):
            return X @ self.weight_.T + _pairs(X @ self.basis_) @ self.quad_.T + self.bias_

    def __repr__(self) -> str:
        return f"ProjectedQuadratic(rank={self.rank}, penalty={self.penalty:g})"


def _n_pairs(r: int) -> int:
    return r * (r + 1) // 2


def _pairs(L: np.ndarray) -> np.ndarray:
    """Products L[:, a] * L[:, c] for a <= c (upper triangle, row-major)."""
    a, c = np.triu_indices(L.shape[1])
    return L[:, a] * L[:, c]


def _as_masks(masks: Any, name: str) -> np.ndarray:
    X = np.asarray(masks)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (masks x components), got shape {X.shape}")
    if X.dtype != bool and not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"{name} must be numeric or bool, got dtype {X.dtype}")
    X = X.astype(np.float64, copy=False)  # never written to
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name} hold NaN or infinite values")
    return X


def _check_fit_data(masks: Any, outputs: Any) -> tuple[np.ndarray, np.ndarray]:
    X = _as_masks(masks, "masks")
    Y = np.asarray(outputs, dtype=np.float64)
    if Y.ndim != 2:
        raise ValueError(
            f"outputs must be a 2-D array (masks x examples), got shape {Y.shape}; "
            "for one example pass outputs.reshape(-1, 1)"
        )
    if Y.shape[0] != X.shape[0]:
        raise ValueError(f"masks have {X.shape[0]} rows but outputs have {Y.shape[0]}: one output row per mask")
    if not np.all(np.isfinite(Y)):
        raise ValueError("outputs hold NaN or infinite values")
    return X, Y


def _check_counts(m: int, varies: np.ndarray) -> None:
    """Refuse masks where no component varies, or too few masks for the unpenalised linear part."""
    if not varies.any():
        raise ValueError("no component varies across the masks: each is never or always ablated")
    if m <= int(varies.sum()) + 1:
        raise ValueError(
            f"{m} masks cannot determine the unpenalised linear part of {int(varies.sum())} varying "
            f"components and a bias: it needs more masks than components + 1 (m > N + 1)"
        )


def _active(varies: np.ndarray) -> np.ndarray:
    """Components that vary across the masks (the others get weight 0, with a warning)."""
    if not varies.all():
        warnings.warn(
            f"{int((~varies).sum())} of {varies.size} components are never or always ablated in the "
            "masks; their weight is set to 0",
            RuntimeWarning,
            stacklevel=4,
        )
    return np.flatnonzero(varies)


def _basis(weight: np.ndarray, scale: np.ndarray, rank: int) -> np.ndarray:
    """Top `rank` left singular vectors of the weights (N x n, each example's column divided by
    its output's spread), each signed so that its largest entry is positive (so that equal
    inputs up to rounding give the same basis, not one with flipped columns)."""
    u, _, _ = np.linalg.svd(weight.T / scale, full_matrices=False)
    u = u[:, :rank]
    signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(rank)])
    return np.ascontiguousarray(u * np.where(signs == 0, 1.0, signs))


class _FirstPass:
    """Rows, the outputs' means and summed squared deviations, and each component's range."""

    def __init__(self) -> None:
        self.m = 0
        self.x_min = self.x_max = self.y_mean = self.y_m2 = None

    def add(self, X: np.ndarray, Y: np.ndarray) -> None:
        c = len(X)
        if c == 0:
            return
        if self.m and (X.shape[1] != self.x_min.size or Y.shape[1] != self.y_mean.size):
            raise ValueError(f"a chunk has {X.shape[1]} components and {Y.shape[1]} examples, the first had "
                             f"{self.x_min.size} and {self.y_mean.size}: every chunk must have the same columns")
        mean = Y.mean(0)
        m2 = ((Y - mean) ** 2).sum(0)
        if not self.m:
            self.m, self.x_min, self.x_max, self.y_mean, self.y_m2 = c, X.min(0), X.max(0), mean, m2
            return
        total = self.m + c
        delta = mean - self.y_mean
        self.y_m2 = self.y_m2 + m2 + delta**2 * (self.m * c / total)
        self.y_mean = self.y_mean + delta * (c / total)
        self.x_min, self.x_max = np.minimum(self.x_min, X.min(0)), np.maximum(self.x_max, X.max(0))
        self.m = total


def _first_pass(chunks: Callable[[], Iterable[tuple[Any, Any]]]) -> _FirstPass:
    first = _FirstPass()
    for masks, outputs in chunks():
        first.add(*_check_fit_data(masks, outputs))
    if not first.m:
        raise ValueError("the chunks hold no rows")
    return first


class _threads:
    """threadpoolctl's limit on BLAS threads, or nothing when `limit` is None."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._ctx = None

    def __enter__(self) -> None:
        if self.limit is not None:
            from threadpoolctl import threadpool_limits

            self._ctx = threadpool_limits(self.limit)
            self._ctx.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
