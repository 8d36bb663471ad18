"""Figures of a run, saved as PNG (matplotlib without a display).

Figures are made with `matplotlib.figure.Figure` on an Agg canvas, never through pyplot: nothing
here changes matplotlib's global backend or keeps figures alive in pyplot's registry, so
importing coar leaves an interactive session's plotting as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from coar.atomic import atomic_path
from coar.evaluate import format_value


def figure(figsize: tuple[float, float], nrows: int = 1, ncols: int = 1, squeeze: bool = True) -> tuple[Figure, object]:
    """A new figure on its own Agg canvas and its axes (as `plt.subplots` returns them), without pyplot."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def save_png(fig: Figure, path: str | Path) -> None:
    """Write `fig` as PNG atomically."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def correlation_histogram(by_alpha: dict[str, dict], path: str | Path) -> None:
    """Distribution of per-example held-out correlations, one histogram per alpha."""
    fig, ax = figure(figsize=(6, 3.5))
    for alpha, result in by_alpha.items():
        values = [v for v in result["correlations"] if v is not None]
        ax.hist(values, bins=40, range=(-0.2, 1), histtype="step", linewidth=1.5,
                label=f"alpha={alpha}: mean {format_value(result['mean_correlation'])}")
    ax.set_xlabel("correlation of predicted and true outputs (per example)")
    ax.set_ylabel("examples")
    ax.legend(loc="upper left", fontsize=8)
    save_png(fig, path)


def correlation_table(table: Mapping[str, Mapping[str, float]], train_alpha: str, path: str | Path) -> None:
    """Mean held-out correlation per method (rows) and evaluation alpha (columns), annotated (cf. the paper's Figure 1)."""
    methods, alphas = list(table), list(next(iter(table.values())))
    values = np.array([[np.nan if table[m][a] is None else table[m][a] for a in alphas] for m in methods])
    fig, ax = figure(figsize=(1.6 + 1.3 * len(alphas), 0.9 + 0.45 * len(methods)))
    ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (r, c), v in np.ndenumerate(values):
        ax.text(c, r, f"{v:.3f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=9)
    ax.set_xticks(range(len(alphas)), [f"{a}\n(training)" if a == train_alpha else a for a in alphas])
    ax.set_yticks(range(len(methods)), methods)
    ax.set_xlabel("alpha of the held-out masks")
    ax.set_title("mean correlation of predicted and true outputs", fontsize=10)
    save_png(fig, path)


def correlation_distributions(correlations: Mapping[str, list], alpha: str, path: str | Path) -> None:
    """Per-example held-out correlations at one alpha, one box per method."""
    methods = list(correlations)
    values = [[v for v in correlations[m] if v is not None] for m in methods]
    fig, ax = figure(figsize=(6, 0.9 + 0.5 * len(methods)))
    ax.boxplot(values, orientation="horizontal", tick_labels=methods, showmeans=True, flierprops={"markersize": 2})
    ax.invert_yaxis()
    ax.set_xlabel(f"per-example correlation of predicted and true outputs (alpha={alpha})")
    ax.axvline(0, color="grey", linewidth=0.5)
    save_png(fig, path)


def predicted_vs_true(true: np.ndarray, predicted: Mapping[str, np.ndarray], example_ids: list[str],
                      path: str | Path) -> None:
    """Predicted vs true outputs across held-out masks: one row per method, one column per example.

    `true` is (masks x k examples); `predicted[method]` has the same shape.
    """
    methods, k = list(predicted), true.shape[1]
    fig, axes = figure((2.2 * k, 2.0 * len(methods)), len(methods), k, squeeze=False)
    for r, method in enumerate(methods):
        for c in range(k):
            ax, t, p = axes[r, c], true[:, c], predicted[method][:, c]
            ax.scatter(t, p, s=6, alpha=0.7)
            corr = np.corrcoef(t, p)[0, 1] if t.std() > 0 and p.std() > 0 else float("nan")
            ax.text(0.03, 0.97, f"r = {corr:.2f}", transform=ax.transAxes, va="top", fontsize=7)
            ax.tick_params(labelsize=6)
            if r == 0:
                ax.set_title(f"example {example_ids[c]}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{method}\npredicted", fontsize=7)
            if r == len(methods) - 1:
                ax.set_xlabel("true output", fontsize=7)
    save_png(fig, path)


def layer_attributions(totals: Mapping[str, tuple[float, float]], path: str | Path) -> None:
    """Attributions summed per layer: mean predicted effect of ablating it and mean summed magnitude."""
    modules = list(totals)
    signed, magnitude = np.array([totals[m] for m in modules]).T
    y = np.arange(len(modules))
    fig, ax = figure(figsize=(6.5, 1 + 0.35 * len(modules)))
    ax.barh(y - 0.2, magnitude, height=0.4, label="sum of |attribution|")
    ax.barh(y + 0.2, signed, height=0.4, label="sum of attributions (effect of ablating the layer)")
    ax.set_yticks(y, modules, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="grey", linewidth=0.5)
    ax.set_xlabel("mean over examples (output units)")
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    save_png(fig, path)


def step_timings(seconds: Mapping[str, float], path: str | Path) -> None:
    """Wall seconds per workflow step."""
    steps = list(seconds)
    fig, ax = figure(figsize=(6, 0.8 + 0.35 * len(steps)))
    ax.barh(steps, [seconds[s] for s in steps])
    for i, s in enumerate(steps):
        ax.text(seconds[s], i, f" {seconds[s]:.1f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("wall seconds (summed over a step's jobs)")
    save_png(fig, path)


def masks_curve(masks: list[int], mean: list[float | None], low: list[float | None], high: list[float | None],
                level: str, stopped_at: int, path: str | Path) -> None:
    """Mean held-out correlation against training masks, with its `level` interval (e.g. "95%"),
    for a `masks: auto` run's rounds (unscored rounds left out); the round it stopped at is marked."""
    scored = [i for i, v in enumerate(mean) if v is not None]
    x = np.array([masks[i] for i in scored])
    y, lo, hi = (np.array([v[i] for i in scored], dtype=float) for v in (mean, low, high))
    fig, ax = figure(figsize=(6, 3.5))
    ax.fill_between(x, lo, hi, alpha=0.25, label=f"{level} interval over examples")
    ax.plot(x, y, marker="o", label="mean held-out correlation")
    ax.axvline(stopped_at, color="grey", linestyle="--", linewidth=1, label=f"stopped at {stopped_at} masks")
    ax.set_xlabel("training masks")
    ax.set_ylabel("mean correlation (training alpha)")
    ax.legend(loc="lower right", fontsize=8)
    save_png(fig, path)
