"""Evaluation: how well attributions predict the outputs of held-out ablated models.

For every example, the Pearson correlation across held-out masks between the true outputs
and the attribution's predictions `<w, mask> + b` (the paper's metric), plus the rank
correlation and the mean absolute error.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def predict(weight: np.ndarray, bias: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Predicted outputs (rows x n) of the linear models (n x N weights) on masks (rows x N)."""
    return masks.astype(np.float64) @ weight.T.astype(np.float64) + bias.astype(np.float64)


def correlation(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pearson correlation per column (example) across rows (masks); NaN where either is constant."""
    t = true - true.mean(0)
    p = pred - pred.mean(0)
    denom = np.sqrt((t * t).sum(0) * (p * p).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (t * p).sum(0) / denom, np.nan)


def rank_correlation(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Spearman correlation per column: Pearson on ranks (ties averaged)."""
    return correlation(rankdata(true, axis=0), rankdata(pred, axis=0))


def score(true: np.ndarray, pred: np.ndarray, example_ids: list[str], worst: int = 10) -> dict:
    """Summary of how well `pred` tracks `true` (rows = held-out masks, columns = examples)."""
    if true.shape != pred.shape:
        raise ValueError(f"true outputs {true.shape} and predictions {pred.shape} differ in shape")
    r = correlation(true, pred)
    finite = np.isfinite(r)
    order = np.argsort(np.where(finite, r, np.inf))[: min(worst, int(finite.sum()))]
    return {
        "n_masks": int(true.shape[0]),
        "n_examples": int(true.shape[1]),
        "mean_correlation": float(np.nanmean(r)),
        "median_correlation": float(np.nanmedian(r)),
        "correlation_quantiles": {str(q): float(np.nanquantile(r, q)) for q in QUANTILES},
        "mean_rank_correlation": float(np.nanmean(rank_correlation(true, pred))),
        "mean_absolute_error": float(np.abs(true - pred).mean()),
        "undefined_correlations": int((~finite).sum()),
        "worst_examples": [{"example": example_ids[i], "correlation": float(r[i])} for i in order],
        "correlations": [None if not np.isfinite(v) else float(v) for v in r],
    }
