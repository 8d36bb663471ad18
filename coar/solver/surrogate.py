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

Deterministic (no random numbers: an SVD and a Cholesky solve), numpy in float64, single-threaded
BLAS by default (`threads`). Memory holds the (N + r (r + 1) / 2)-square Gram matrix and the
masks in float64, so it is for runs whose masks fit in memory.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.linalg

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
        n = Y.shape[1]
        if self.rank > min(N, n):
            raise ValueError(
                f"rank {self.rank} exceeds min(components, examples) = min({N}, {n}): the basis comes "
                f"from the {N} x {n} OLS weights, which have at most {min(N, n)} directions"
            )
        with _threads(self.threads):
            active = _active(X)
            n_features = active.size + _n_pairs(self.rank)
            if m <= active.size + 1:
                raise ValueError(
                    f"{m} masks cannot determine the unpenalised linear part of {active.size} varying "
                    f"components and a bias: it needs more masks than components + 1 (m > N + 1)"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # constant components: reported above
                ols = linear_fit((X, Y), "ols", backend="numpy")
            scale = Y.std(0)
            scale = np.where(scale > 0, scale, 1.0)
            u, _, _ = np.linalg.svd(ols.weight.T.astype(np.float64) / scale, full_matrices=False)
            self.basis_ = np.ascontiguousarray(u[:, : self.rank])

            Q = _pairs(X @ self.basis_)
            q_mean, q_std = Q.mean(0), Q.std(0)
            q_std = np.where(q_std > 0, q_std, 1.0)
            Z = np.concatenate([X[:, active] - X[:, active].mean(0), (Q - q_mean) / q_std], axis=1)
            gram = Z.T @ Z
            k = active.size
            gram[np.arange(k, n_features), np.arange(k, n_features)] += self.penalty
            gram[np.arange(n_features), np.arange(n_features)] += 1e-10 * np.trace(gram) / n_features
            y_mean = Y.mean(0)
            coef = scipy.linalg.cho_solve(scipy.linalg.cho_factor(gram), Z.T @ (Y - y_mean))
        self.weight_ = np.zeros((n, N))
        self.weight_[:, active] = coef[:k].T
        self.quad_ = (coef[k:] / q_std[:, None]).T
        self.bias_ = y_mean - X.mean(0) @ self.weight_.T - q_mean @ self.quad_.T
        self.n_masks_ = m
        return self

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
    X = X.astype(np.float64)
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


def _active(X: np.ndarray) -> np.ndarray:
    """Components that vary across the masks (the others get weight 0, with a warning)."""
    varies = X.max(0) > X.min(0)
    if not varies.any():
        raise ValueError("no component varies across the masks: each is never or always ablated")
    if not varies.all():
        warnings.warn(
            f"{int((~varies).sum())} of {varies.size} components are never or always ablated in the "
            "masks; their weight is set to 0",
            RuntimeWarning,
            stacklevel=3,
        )
    return np.flatnonzero(varies)


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
