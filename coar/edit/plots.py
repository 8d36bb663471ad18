"""Figures of COAR-Edit results, saved as PNG (matplotlib without a display, nothing global)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from coar.plots import figure, save_png


def metric_vs_k(ks: Sequence[int], series: dict[str, Sequence[float | None]], path: str | Path, *,
                title: str, ylabel: str = "validation metric", chosen_k: int | None = None) -> None:
    """One line per named metric against the number k of ablated components; the chosen k dashed."""
    fig, ax = figure((6, 3.5))
    for name, values in series.items():
        ax.plot(list(ks), [float("nan") if v is None else v for v in values], marker=".", linewidth=1.2, label=name)
    if chosen_k is not None:
        ax.axvline(chosen_k, color="grey", linestyle="--", linewidth=1, label=f"chosen k = {chosen_k}")
    ax.set_xlabel("components ablated (k)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8)
    save_png(fig, path)


def outputs_before_after(examples: Sequence[dict], path: str | Path, *, title: str) -> None:
    """A per-example edit: each target example's output before and after its own edit (k beside it)."""
    fig, ax = figure((6, 3.5))
    x = range(len(examples))
    ax.scatter(x, [e["output"][0] for e in examples], marker="o", label="before", color="grey")
    ax.scatter(x, [e["output"][1] for e in examples], marker="^", label="after its own edit", color="C0")
    for i, e in enumerate(examples):
        ax.annotate(f"k={e['k']}", (i, e["output"][1]), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("target example")
    ax.set_ylabel("output (e.g. margin)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8)
    save_png(fig, path)
