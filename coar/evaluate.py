"""Evaluation: how well attributions predict the outputs of held-out ablated models.

For every example, the Pearson correlation across held-out masks between the true outputs
and the attribution's predictions `<w, mask> + b` (the paper's metric), plus the rank
correlation and the mean absolute error.

A correlation is undefined where an example's outputs or predictions are constant across the
masks. Undefined values are written as null (JSON has no NaN) and counted beside the means,
which are over the defined ones; a statistic with no defined value at all is null too.
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence

import numpy as np

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
    from scipy.stats import rankdata  # here: the workflow imports this module at every start-up

    return correlation(rankdata(true, axis=0), rankdata(pred, axis=0))


def score(true: np.ndarray, pred: np.ndarray, example_ids: list[str], worst: int = 10) -> dict:
    """Summary of how well `pred` tracks `true` (rows = held-out masks, columns = examples)."""
    if true.shape != pred.shape:
        raise ValueError(f"true outputs {true.shape} and predictions {pred.shape} differ in shape")
    r = correlation(true, pred)
    finite = np.isfinite(r)
    order = np.argsort(np.where(finite, r, np.inf))[: min(worst, int(finite.sum()))]
    defined, ranks = r[finite], rank_correlation(true, pred)
    ranks = ranks[np.isfinite(ranks)]
    return {
        "n_masks": int(true.shape[0]),
        "n_examples": int(true.shape[1]),
        "mean_correlation": _stat(np.mean, defined),
        "median_correlation": _stat(np.median, defined),
        "correlation_quantiles": {str(q): _stat(lambda v: np.quantile(v, q), defined) for q in QUANTILES},
        "mean_rank_correlation": _stat(np.mean, ranks),
        "mean_absolute_error": _stat(np.mean, np.abs(true - pred)),
        "undefined_correlations": int((~finite).sum()),
        "worst_examples": [{"example": example_ids[i], "correlation": float(r[i])} for i in order],
        "correlations": [None if not np.isfinite(v) else float(v) for v in r],
    }


def _stat(fn, values: np.ndarray) -> float | None:
    """fn(values) as a float, or None when there is nothing finite to summarise."""
    result = float(fn(values)) if values.size else float("nan")
    return result if np.isfinite(result) else None


def format_value(value: float | None, digits: int = 3) -> str:
    """A statistic for a table: fixed digits, or 'undefined' for None."""
    return "undefined" if value is None else f"{value:.{digits}f}"


def compare(models: Mapping[str, tuple[np.ndarray, np.ndarray] | Predictor],
            heldout: Mapping[str, tuple[np.ndarray, np.ndarray]], example_ids: list[str]) -> dict[str, dict[str, dict]]:
    """`score` of every method's models on every held-out set (masks, outputs): linear models as
    (weight, bias), or any model with `predict(masks)` (a surrogate beyond linear,
    coar.solver.surrogate).

    All methods meet the same held-out masks, so the result, indexed [method][alpha], is a
    side-by-side comparison.
    """
    return {method: {alpha: score(outputs, predict_with(model, masks), example_ids)
                     for alpha, (masks, outputs) in heldout.items()}
            for method, model in models.items()}


class Predictor(Protocol):
    """A model of the ablated outputs beyond per-example linear ones (coar.solver.surrogate)."""

    def predict(self, masks: np.ndarray) -> np.ndarray: ...


def predict_with(model: tuple[np.ndarray, np.ndarray] | Predictor, masks: np.ndarray) -> np.ndarray:
    """Predicted outputs (rows x n) of linear models (weight, bias) or of a model with `predict`."""
    if hasattr(model, "predict"):
        return np.asarray(model.predict(masks), dtype=np.float64)
    weight, bias = model
    return predict(weight, bias, masks)


def correlation_table(comparison: Mapping[str, Mapping[str, dict]], train_alpha: str,
                      key: str = "mean_correlation") -> str:
    """Markdown table of `key` with one row per method and one column per alpha (the training one marked)."""
    alphas = list(next(iter(comparison.values())))
    header = [f"{a} (training)" if a == train_alpha else a for a in alphas]
    lines = [f"| method | {' | '.join(header)} |", "|---" * (len(alphas) + 1) + "|"]
    lines += [f"| {method} | " + " | ".join(format_value(by_alpha[a][key]) for a in alphas) + " |"
              for method, by_alpha in comparison.items()]
    return "\n".join(lines)


def module_totals(weight: np.ndarray, modules: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Per module (layer), in component order: the mean over examples of the summed attribution
    of its components (the predicted effect of ablating them all) and of the summed magnitudes."""
    totals: dict[str, tuple[float, float]] = {}
    modules = np.asarray(modules)
    for module in dict.fromkeys(modules.tolist()):
        w = weight[:, modules == module].astype(np.float64)
        totals[module] = (float(w.sum(1).mean()), float(np.abs(w).sum(1).mean()))
    return totals
