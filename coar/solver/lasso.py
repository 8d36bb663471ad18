"""Lasso from Gram statistics, batched over examples: FISTA with adaptive restart.

Convention of scikit-learn's Lasso: minimise (1 / (2m)) ||y - X w - b||^2 + lam ||w||_1.
Centring removes b, and times m the objective is 0.5 w'Sxx w - w'Sxy + m lam ||w||_1 + const:
it needs only the statistics and products with Sxx, so the same code runs on a dense Gram
matrix or on a StreamedDesign. Each iteration costs one product Sxx @ W for all unconverged
examples together (proximal gradient steps vectorise over examples, coordinate descent would
not). An example stops when its duality gap is at most tol * syy, scikit-learn's criterion.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .iterative import Design, LiveColumns
from .stats import column_dot


def default_lasso_lambdas(stats: Design, num: int = 13) -> np.ndarray:
    """Per example (L x n): `num` lambdas log-spaced from lam_max down to 1e-3 lam_max.

    lam_max = max_i |Sxy_ik| / m is the smallest penalty whose solution is all zero; the same
    grid as scikit-learn's lasso_path, relative to each example's own lam_max.
    """
    xp = stats.backend.xp
    lam_max = stats.backend.to_numpy(xp.max(xp.abs(stats.sxy), axis=0)) / stats.count
    return np.logspace(0, -3, num)[:, None] * lam_max[None, :]


def lasso_solve(
    design: Design,
    lam: Any,
    W0: Any | None = None,
    *,
    step: float | None = None,
    tol: float = 1e-7,
    max_iter: int = 1000,
) -> Any:
    """Weights W (N x n), column k the lasso solution at penalty lam[k] > 0 (sklearn units).

    W0 warm-starts the iteration (e.g. the solution at the previous lambda of a path). `step`
    is 1 / lipschitz(design), computed when not given (pass it to reuse it along a path).
    """
    xp = design.backend.xp
    alpha = design.count * xp.asarray(lam, dtype=xp.float64)
    step = 1.0 / lipschitz(design) if step is None else step
    W = xp.zeros_like(design.sxy) if W0 is None else W0.copy()
    C, syy = design.sxy, design.syy
    # The iterate X and its product AX = Sxx @ X; the momentum point and its product are linear
    # combinations of the last two, so each iteration needs one product and the duality gap
    # of the iterate comes for free.
    X = W.copy()
    AX = design.gram_matmul(X)
    X_prev, AX_prev = X, AX
    t, beta = xp.ones(W.shape[1]), xp.zeros(W.shape[1])
    columns = LiveColumns(W, xp)
    for _ in range(max_iter):
        done = _duality_gap(xp, X, AX, C, syy, alpha) <= tol * syy
        X, AX, X_prev, AX_prev, C, syy, alpha, t, beta = columns.retire(
            done, X, AX, X_prev, AX_prev, C, syy, alpha, t, beta
        )
        if columns.finished:
            return W
        Y = (1 + beta) * X - beta * X_prev
        AY = (1 + beta) * AX - beta * AX_prev
        X_next = _soft_threshold(xp, Y - step * (AY - C), step * alpha)
        AX_next = design.gram_matmul(X_next)
        # O'Donoghue and Candes's gradient restart: drop the momentum of an example when it
        # points uphill.
        restart = column_dot(xp, Y - X_next, X_next - X) > 0
        t_next = (1 + xp.sqrt(1 + 4 * t * t)) / 2
        beta = xp.where(restart, 0.0, (t - 1) / t_next)
        t = xp.where(restart, 1.0, t_next)
        X_prev, AX_prev, X, AX = X, AX, X_next, AX_next
    columns.give_up(X, "lasso (FISTA)", max_iter)
    return W


def _duality_gap(xp: Any, X: Any, AX: Any, C: Any, syy: Any, alpha: Any) -> Any:
    """Duality gap of 0.5 ||yc - Xc w||^2 + alpha ||w||_1 at w = each column of X.

    From statistics only: ||r||^2 = syy - 2 w'Sxy + w'Sxx w and Xc'r = Sxy - Sxx w; the dual
    point is r scaled into the feasible set, as in scikit-learn's coordinate descent.
    """
    cross = column_dot(xp, X, C)
    r2 = xp.maximum(syy - 2 * cross + column_dot(xp, X, AX), 0.0)
    dual_norm = xp.max(xp.abs(C - AX), axis=0)
    scale = xp.where(dual_norm > alpha, alpha / xp.maximum(dual_norm, 1e-300), 1.0)
    l1 = xp.sum(xp.abs(X), axis=0)
    return 0.5 * r2 * (1 + scale * scale) + alpha * l1 - scale * (syy - cross)


def _soft_threshold(xp: Any, Z: Any, threshold: Any) -> Any:
    """sign(Z) max(|Z| - threshold, 0), in two passes over Z."""
    return Z - xp.clip(Z, -threshold, threshold)


def lipschitz(design: Design, max_iter: int = 50, rtol: float = 1e-4) -> float:
    """An upper estimate of the largest eigenvalue of Sxx, the gradient's Lipschitz constant.

    Power iteration approaches it from below, so the estimate is inflated by 10%; a step up to
    twice 1 / lambda_max would still be stable for the gradient part, and restarts guard the
    momentum.
    """
    xp = design.backend.xp
    v = xp.asarray(np.random.default_rng(0).standard_normal((design.n_components, 1)))
    v /= xp.linalg.norm(v)
    estimate = 0.0
    for _ in range(max_iter):
        w = design.gram_matmul(v)
        norm = float(xp.linalg.norm(w))
        if norm == 0.0:
            return 1.0  # Sxx = 0: every step size is fine
        v = w / norm
        converged = abs(norm - estimate) <= rtol * norm
        estimate = norm
        if converged:
            break
    return 1.1 * estimate

