"""Ordinary least squares with a bias, from Gram statistics: the published COAR estimator."""

from __future__ import annotations

from typing import Any

import numpy as np

from .stats import GramStats


def ols_factor(stats: GramStats, *, overwrite: bool = False) -> Any:
    """The Cholesky factor of the centred Gram matrix, shared by every example's solve.

    overwrite=True factors stats.sxx in place (it is then no longer the Gram matrix): the fit
    then holds one N x N matrix, not two. Needs a positive definite Sxx: more masks than
    components, and no two components (or combinations) ablated in lockstep. Raises ValueError
    suggesting ridge otherwise.
    """
    try:
        return stats.backend.cholesky(stats.sxx, overwrite=overwrite)
    except np.linalg.LinAlgError as err:
        raise ValueError(
            "the centred Gram matrix of the masks is singular: some components are collinear in "
            "the data (e.g. always ablated together), so OLS weights are not unique; use "
            "method='ridge' or draw more masks"
        ) from err


def ols_solve(stats: GramStats, factor: Any | None = None) -> Any:
    """Weights W (N x n) = Sxx^-1 Sxy, from `factor` (ols_factor of the same masks) or by
    factoring stats.sxx."""
    factor = ols_factor(stats) if factor is None else factor
    return stats.backend.cho_solve_factor(factor, stats.sxy)
