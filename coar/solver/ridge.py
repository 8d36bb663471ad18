"""Ridge regression on Gram statistics: a whole lambda path from one eigendecomposition.

Convention of scikit-learn's Ridge: minimise ||Yc - Xc w||^2 + lam ||w||^2 (intercept not
penalised), so with Sxx = V diag(e) V', W(lam) = V diag(1 / (e + lam)) V' Sxy. One
eigendecomposition of the training Gram matrix gives every lambda for every example, and
rotating the validation statistics into the same basis once gives the validation error of every
(lambda, example) in closed form, at one N x N by N x n product per lambda. The refit on all
rows at each example's chosen lambda factorises once per distinct lambda chosen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .stats import GramStats

# An eigendecomposition costs about as much as this many Cholesky factorisations.
_CHOLESKY_PER_EIGH = 8


def default_ridge_lambdas(stats: GramStats, num: int = 13) -> np.ndarray:
    """`num` lambdas, log-spaced from 1e2 down to 1e-4 times trace(Sxx) / N.

    trace(Sxx) / N is the mean eigenvalue of the Gram matrix, so the grid runs from shrinking
    every direction of the data strongly to nearly OLS, whatever m and the ablation rate.
    """
    return float(stats.sxx_diag.mean()) * np.logspace(2, -4, num)


def ridge_path(train: GramStats, val: GramStats, lambdas: Any) -> Iterator[tuple[Any, Any, None]]:
    """For each row `lam` (n,) of `lambdas` (L x n): (lam, validation SSE per example, None).

    The weights are never formed in the original basis; the trailing None says there is
    nothing to warm-start a refit with (the refit is closed form too).
    """
    eigvals, basis = _eigh(train)
    coef = basis.T @ train.sxy
    mean_x = basis.T @ train.mean_x
    val_rotated = val.rotated(basis)
    for lam in lambdas:
        U = coef / (eigvals[:, None] + lam[None, :])
        yield lam, val_rotated.sse(U, train.mean_y - mean_x @ U), None


def ridge_solve(stats: GramStats, lam: Any) -> Any:
    """Weights W (N x n), column k the ridge solution at penalty lam[k].

    Examples that share a lambda share one Cholesky factorisation of Sxx + lam I; when there
    are more distinct lambdas than `_CHOLESKY_PER_EIGH`, one eigendecomposition serves them all.
    """
    xp = stats.backend.xp
    lam = xp.asarray(lam, dtype=xp.float64)
    values = np.unique(stats.backend.to_numpy(lam))
    if values.size > _CHOLESKY_PER_EIGH:
        eigvals, basis = _eigh(stats)
        return basis @ ((basis.T @ stats.sxy) / (eigvals[:, None] + lam[None, :]))
    W = xp.empty_like(stats.sxy)
    diagonal = xp.arange(stats.n_components)
    for value in values:
        columns = lam == value
        shifted = stats.sxx.copy()
        shifted[diagonal, diagonal] += value
        W[:, columns] = stats.backend.cho_solve(shifted, stats.sxy[:, columns])
    return W


def _eigh(stats: GramStats) -> tuple[Any, Any]:
    """Eigenvalues (clipped at 0: rounding leaves tiny negatives) and eigenvectors of Sxx."""
    xp = stats.backend.xp
    eigvals, basis = xp.linalg.eigh(stats.sxx)
    return xp.maximum(eigvals, 0.0), basis
