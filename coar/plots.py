"""Figures of a run, saved as PNG (matplotlib without a display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from coar.atomic import atomic_path  # noqa: E402


def correlation_histogram(by_alpha: dict[str, dict], path: str | Path) -> None:
    """Distribution of per-example held-out correlations, one histogram per alpha."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for alpha, result in by_alpha.items():
        values = [v for v in result["correlations"] if v is not None]
        ax.hist(values, bins=40, range=(-0.2, 1), histtype="step", linewidth=1.5,
                label=f"alpha={alpha}: mean {result['mean_correlation']:.3f}")
    ax.set_xlabel("correlation of predicted and true outputs (per example)")
    ax.set_ylabel("examples")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
