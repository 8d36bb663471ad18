"""Ordinary least squares with a bias, from Gram statistics: the published COAR estimator."""

from __future__ import annotations

from typing import Any

import numpy as np

from .stats import GramStats


def ols_solve(stats: GramStats) -> Any:
    """Weights W (N x n) = Sxx^-1 Sxy, by Cholesky factorisation of the centred Gram matrix.

    Needs a positive definite Sxx: more masks than components, and no two components (or
    combinations) ablated in lockstep. Raises ValueError suggesting ridge otherwise.
    """
    try:
        return stats.backend.cho_solve(stats.sxx, stats.sxy)
    except np.linalg.LinAlgError as err:
        raise ValueError(
            "the centred Gram matrix of the masks is singular: some components are collinear in "
            "the data (e.g. always ablated together), so OLS weights are not unique; use "
            "method='ridge' or draw more masks"
        ) from err
