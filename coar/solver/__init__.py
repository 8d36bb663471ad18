"""COAR's regression solver: per-example linear models of ablated-model outputs on masks.

For m ablation masks X (m x N, 1 = ablated) and outputs Y (m x n examples), every example's
model y ~ x @ w + b shares the design X, so the whole fit is one multi-output least-squares
problem solved from streamed sufficient statistics (see coar.solver.stats).

    fit((X, Y), "ols")                 # the published estimator
    fit(RowReader(path, 4096), "ridge")   # streamed, penalty chosen per example
    for first, block in fit_blocks(RowReader(path, 4096), "ols"): ...   # block of examples by block
    ProjectedQuadratic().fit(X, Y).predict(masks)   # beyond linear: shared interactions (coar.solver.surrogate)
"""

from .backend import Backend, get_backend
from .estimators import VAL_EVERY, Fit, FitPlan, closed_form_bytes, fit, fit_blocks, fit_stats, plan_fit
from .iterative import StreamedDesign
from .stats import GramStats, SplitStream, split_stats
from .surrogate import ProjectedQuadratic

__all__ = [
    "VAL_EVERY",
    "Backend",
    "Fit",
    "FitPlan",
    "GramStats",
    "ProjectedQuadratic",
    "SplitStream",
    "StreamedDesign",
    "closed_form_bytes",
    "fit",
    "fit_blocks",
    "fit_stats",
    "get_backend",
    "plan_fit",
    "split_stats",
]
