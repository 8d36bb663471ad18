"""What a run's reports show: the summary and comparison Markdown, and the figures (drawn with
coar.plots), including which examples the scatter plots show.

coar.steps reads and validates a run's files and calls these with the data and every output
path; nothing here checks a run or chooses where a file goes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from coar import plots
from coar.atomic import atomic_path
from coar.evaluate import correlation_table, format_value, module_totals, predict
from coar.rounds import RoundScore, curve_markdown


class FigurePaths(NamedTuple):
    """Where each of the report's figures goes (the rule declares each one)."""

    correlation_table: Path
    correlation_distributions: Path
    predicted_vs_true: Path
    layer_attributions: Path
    step_timings: Path


def step_seconds(timings: Sequence[str | Path]) -> dict[str, float]:
    """Wall seconds per step from Snakemake benchmark files (summed over shards)."""
    seconds: dict[str, float] = {}
    for path in timings:
        step = Path(path).stem.split("-")[0]
        lines = Path(path).read_text().splitlines()
        seconds[step] = seconds.get(step, 0.0) + float(lines[1].split("\t")[0])
    return seconds


def write_text(path: str | Path, text: str) -> None:
    """Write a report file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def summary_markdown(run_name: str, info: Mapping, evaluation: Mapping, seconds: Mapping[str, float],
                     plot_link: str, rounds: Sequence[RoundScore] = (), curve_link: str | None = None) -> str:
    """summary.md: the run's task and sizes (`info`, from prepare), the held-out scores per alpha
    (`evaluation`), the rounds of a `masks: auto` run and their curve, step timings, and a link to
    the correlation histogram."""
    ev, task_info = evaluation, info.get("task_info", {})
    lines = [
        f"# coar run `{run_name}`",
        "",
        f"- task: `{info['task']}`" + (f", test accuracy {task_info['test_accuracy']:.4f}" if "test_accuracy" in task_info else ""),
        f"- components: {info['n_components']} ({', '.join(f'{v} {k}' for k, v in info['components_by_kind'].items())})",
        f"- examples attributed: {info['n_examples']}",
        f"- training masks: {ev['n_masks']} at alpha = {ev['alpha']:g}, seed {ev['seed']}; estimator: {ev['method']}",
        f"- ablation: {ev['ablation']}; output function: `{ev['output_fn']}`; precision: {ev['precision']} "
        "(as recorded in the attributions)",
        "",
        "| alpha | held-out masks | of them equal to a training mask | mean corr. | median corr. | mean rank corr. | MAE | undefined corr. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for alpha, r in ev["by_alpha"].items():
        same = r.get("coincident_with_training")
        values = (r[k] for k in ("mean_correlation", "median_correlation", "mean_rank_correlation", "mean_absolute_error"))
        lines.append(f"| {alpha} | {r['n_masks']} | {'not counted' if same is None else same} | "
                     + " | ".join(format_value(v) for v in values) + f" | {r['undefined_correlations']} |")
    if rounds:
        lines += ["", f"## Masks chosen by `masks: auto` (held-out correlation at alpha {ev['alpha']:g} after each round)",
                  "", curve_markdown(rounds)]
        if curve_link:
            lines += ["", f"![held-out correlation against training masks]({curve_link})"]
        lines.append("")
    if seconds:
        lines += ["", "| step | wall seconds |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in seconds.items()]
    lines += ["", f"![per-example correlations]({plot_link})", ""]
    return "\n".join(lines)


def write_summary(run_name: str, info: Mapping, evaluation: Mapping, timings: Sequence[str | Path],
                  out: str | Path, plot: str | Path, rounds: Sequence[RoundScore] = (),
                  curve: str | Path | None = None) -> str:
    """Draw the correlation histogram at `plot` (and, for a `masks: auto` run, its `rounds`'
    curve at `curve`), write summary.md at `out` (linking the plots relative to it) and return its text."""
    plots.correlation_histogram(evaluation["by_alpha"], plot)
    link = lambda path: Path(os.path.relpath(path, Path(out).parent)).as_posix()
    if rounds and curve is not None:
        plots.masks_curve([r.masks for r in rounds], [r.mean for r in rounds], [r.low for r in rounds],
                          [r.high for r in rounds], f"{rounds[0].confidence:.0%}", rounds[-1].masks, curve)
    text = summary_markdown(run_name, info, evaluation, step_seconds(timings), link(plot), rounds,
                            link(curve) if rounds and curve is not None else None)
    write_text(out, text)
    return text


def comparison_markdown(run_name: str, by_method: Mapping[str, Mapping[str, dict]], train_alpha: str,
                        n_examples: int) -> str:
    """comparison.md: the mean held-out correlation per method and alpha."""
    return "\n".join([
        f"# Mean held-out correlation per method and alpha: run `{run_name}`",
        "",
        f"Pearson correlation, per example, of predicted and true outputs across held-out masks; "
        f"mean over {n_examples} examples. Training alpha {train_alpha}.",
        "",
        correlation_table(by_method, train_alpha),
        "",
    ])


def scatter_examples(correlations: Sequence[float | None], examples: int) -> np.ndarray:
    """Indices of the examples the scatter plots show: the worst, the best and evenly spaced
    ranks between (undefined correlations rank lowest)."""
    r = np.array([np.nan if v is None else v for v in correlations])
    ranked = np.argsort(np.where(np.isfinite(r), r, -np.inf))
    return ranked[np.linspace(0, len(ranked) - 1, min(examples, len(ranked))).round().astype(int)]


def draw_figures(comparison: Mapping, methods: Mapping, masks: np.ndarray, outputs: np.ndarray,
                 seconds: Mapping[str, float], paths: FigurePaths, examples: int = 4) -> FigurePaths:
    """The report's figures from comparison.json's content, every method's attributions (objects
    with weight, bias, example_ids and components), the held-out masks and outputs at the
    training alpha and the step timings. The first method (COAR) picks the scatter plots'
    examples (scatter_examples) and gives the per-layer sums."""
    train = comparison["alpha"]
    plots.correlation_table(comparison["mean_correlation"], train, paths.correlation_table)
    plots.correlation_distributions({m: r[train]["correlations"] for m, r in comparison["by_method"].items()}, train,
                                    paths.correlation_distributions)
    first = next(iter(methods))
    reference = methods[first]
    picks = scatter_examples(comparison["by_method"][first][train]["correlations"], examples)
    plots.predicted_vs_true(outputs[:, picks], {m: predict(a.weight[picks], a.bias[picks], masks) for m, a in methods.items()},
                            [reference.example_ids[i] for i in picks], paths.predicted_vs_true)
    plots.layer_attributions(module_totals(reference.weight, [c[0] for c in reference.components]),
                             paths.layer_attributions)
    plots.step_timings(seconds, paths.step_timings)
    return paths
