"""One function per workflow step. Each rule (and each `coar` subcommand) calls one of these.

A run directory holds what `prepare` made: `task.pt` (the model and examples), 
`components.json` and `prepare.json` (task info and fingerprints). Every later step checks
that what it reads was made for this run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch

import coar
from coar import h5format
from coar.ablation import unit_fills
from coar.atomic import atomic_path, write_json
from coar.batching import resolve_max_batch
from coar.components import ComponentSet, discover
from coar.evaluate import predict, score
from coar.fastpath import FastPath, prepare as prepare_fast
from coar.fingerprint import model_fingerprint, tensors_fingerprint
from coar.forward import run_masked
from coar.masks import drop_rows_in, sample_masks, shard_ranges
from coar.outputs import resolve_output_fn
from coar.precision import autocast, check_precision
from coar.task import Task, load_saved_task, load_task, save_task


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when a GPU is visible; 'cuda' without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch sees no GPU; use device: cpu or auto")
    return torch.device(device)


def _run_file(run_dir: str | Path, name: str) -> Path:
    path = Path(run_dir) / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the prepare step first (coar prepare)")
    return path


def prepare(spec: str, params: dict, kinds: str | Sequence[str], include: Sequence[str], exclude: Sequence[str],
            run_dir: str | Path) -> dict:
    """Build the task, discover its components and save both with their fingerprints."""
    start = time.perf_counter()
    task = load_task(spec, params)
    components = discover(task.model, kinds, include, exclude)
    run_dir = Path(run_dir)
    save_task(task, run_dir / "task.pt")
    with atomic_path(run_dir / "components.json") as tmp:
        components.save(tmp)
    info = {
        "task": spec,
        "task_params": params,
        "task_info": task.info,
        "output_fn": task.output_fn,
        "n_examples": task.n_examples,
        "n_components": len(components),
        "components_by_kind": {k: sum(g.size for g in components.groups if g.kind == k) for k in {g.kind for g in components.groups}},
        "model_fingerprint": model_fingerprint(task.model),
        "components_fingerprint": components.fingerprint,
        "examples_fingerprint": tensors_fingerprint(task.inputs, task.labels),
        "coar_version": coar.__version__,
        "seconds": time.perf_counter() - start,
    }
    write_json(run_dir / "prepare.json", info)
    return info


def run_info(run_dir: str | Path) -> dict:
    """What `prepare` recorded for this run."""
    return json.loads(_run_file(run_dir, "prepare.json").read_text())


def run_expect(run_dir: str | Path) -> dict:
    """Attributes every row file of this run must carry (fingerprints and sizes)."""
    info = run_info(run_dir)
    keys = ("n_components", "n_examples", "model_fingerprint", "components_fingerprint", "examples_fingerprint")
    return {k: info[k] for k in keys}


def collect(run_dir: str | Path, out: str | Path, *, shard: int, shards: int, masks: int, alpha: float, seed: int,
            ablation: str, output_fn: str | None, masks_per_pass: int, max_batch: int | str, device: str,
            purpose: str = "train", stream: int | None = None, exclude_masks_of: str | Path | None = None,
            threads: int | None = None, precision: str = "fp32", fast_path: FastPath = FastPath()) -> None:
    """Sample shard `shard` of the masks, run the ablated model on them, write the shard file.

    Masks come from the random stream (seed, purpose, stream), stream defaulting to the shard
    index, so each shard is reproducible on its own.
    With `exclude_masks_of` (a dataset file), masks that coincide with its masks are dropped
    first, so held-out masks never repeat a training mask.
    `precision` runs the passes under autocast; `fast_path` (coar.fastpath) transforms the model
    without changing its ablated outputs; `max_batch` "auto" sizes passes to the device (coar.batching).
    """
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    check_precision(precision, dev)
    info, expect = run_info(run_dir), run_expect(run_dir)
    task = load_saved_task(_run_file(run_dir, "task.pt"))
    components = ComponentSet.load(_run_file(run_dir, "components.json"))
    if model_fingerprint(task.model) != info["model_fingerprint"] or components.fingerprint != info["components_fingerprint"]:
        raise RuntimeError(f"{run_dir}: task.pt or components.json changed after prepare; rerun the prepare step")
    start, stop = shard_ranges(masks, shards)[shard]
    x = sample_masks(seed, shard if stream is None else stream, stop - start, len(components), alpha, purpose)
    if exclude_masks_of is not None:
        with h5py.File(exclude_masks_of, "r", locking=False) as f:
            x = drop_rows_in(x, f["masks"])
        stop = start + len(x)
    fn_name = output_fn or task.output_fn
    model = task.model.to(dev)
    fast = prepare_fast(model, components, unit_fills(model, components, ablation, task.reference_inputs), fast_path)
    rows = resolve_max_batch(max_batch, fast.model, task.inputs, dev, lambda: autocast(precision, dev))
    y = run_masked(fast.model, components, x, task.inputs, task.labels, resolve_output_fn(fn_name),
                   masks_per_pass=masks_per_pass, max_batch=rows, mode=ablation, fills=fast.fills,
                   progress=True, precision=precision)
    meta = {**expect, "seed": seed, "alpha": alpha, "shard": shard, "row_start": start, "row_stop": stop,
            "output_fn": fn_name, "ablation": ablation, "coar_version": coar.__version__, "encoding": h5format.ENCODING}
    h5format.write_shard(out, x, y, meta)


def merge(run_dir: str | Path, shard_paths: Sequence[str | Path], out: str | Path, masks: int) -> None:
    """Check that the shards belong to this run and tile all m rows, then merge them."""
    h5format.merge_shards(shard_paths, out, run_expect(run_dir), masks)


def fit(run_dir: str | Path, data: str | Path, out: str | Path, *, method: str, backend: str, chunk_rows: int) -> dict:
    """Fit one linear model per example on the merged dataset (streamed) and save it."""
    from coar import solver

    expect = run_expect(run_dir)
    start = time.perf_counter()
    result = solver.fit(lambda: h5format.iter_chunks(data, chunk_rows, expect), method=method, backend=backend)
    task_ids = load_saved_task(_run_file(run_dir, "task.pt")).example_ids
    components = ComponentSet.load(_run_file(run_dir, "components.json"))
    h5format.write_attributions(out, result.weight, result.bias, result.lam, components.table(), task_ids, {
        "encoding": h5format.ENCODING, "solver": f"coar.solver backend={backend}", "method": result.method, "n_masks": result.n_masks,
        **{k: expect[k] for k in ("model_fingerprint", "components_fingerprint", "examples_fingerprint")},
    })
    return {"seconds": time.perf_counter() - start, "method": result.method, "n_masks": result.n_masks}


def _read_rows(path: str | Path, expect: dict) -> tuple[np.ndarray, np.ndarray]:
    """All (masks, outputs) rows of a shard or dataset file, validated against `expect`."""
    blocks = list(h5format.iter_chunks(path, 1 << 16, expect))
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


def evaluate(run_dir: str | Path, attributions: str | Path, heldout: dict[float, str | Path], train_alpha: float,
             out: str | Path) -> dict:
    """Score the attributions on held-out masks at each alpha; write evaluation.json."""
    expect = run_expect(run_dir)
    fingerprints = {k: expect[k] for k in ("model_fingerprint", "components_fingerprint", "examples_fingerprint")}
    attr = h5format.read_attributions(attributions, expect=fingerprints)
    by_alpha = {}
    for alpha, path in sorted(heldout.items()):
        masks, outputs = _read_rows(path, {**expect, "alpha": alpha})
        by_alpha[f"{alpha:g}"] = score(outputs, predict(attr.weight, attr.bias, masks), attr.example_ids)
    main = by_alpha[f"{train_alpha:g}"]
    result = {
        "alpha": train_alpha,
        "method": attr.attrs["method"],
        "n_masks": attr.attrs["n_masks"],
        "mean_correlation": main["mean_correlation"],
        "median_correlation": main["median_correlation"],
        "n_heldout_masks": main["n_masks"],
        "by_alpha": by_alpha,
    }
    write_json(out, result)
    return result


def _step_seconds(timings: Sequence[str | Path]) -> dict[str, float]:
    """Wall seconds per step from Snakemake benchmark files (summed over shards)."""
    seconds: dict[str, float] = {}
    for path in timings:
        step = Path(path).stem.split("-")[0]
        lines = Path(path).read_text().splitlines()
        seconds[step] = seconds.get(step, 0.0) + float(lines[1].split("\t")[0])
    return seconds


def summarize(run_dir: str | Path, evaluation: str | Path, timings: Sequence[str | Path], out: str | Path) -> str:
    """A short Markdown summary of the run (and a correlation histogram beside it)."""
    from coar.plots import correlation_histogram

    info = run_info(run_dir)
    ev = json.loads(Path(evaluation).read_text())
    plot = Path(out).parent / "plots" / "correlation_histogram.png"
    correlation_histogram(ev["by_alpha"], plot)
    task_info = info.get("task_info", {})
    lines = [
        f"# coar run `{Path(run_dir).name}`",
        "",
        f"- task: `{info['task']}`" + (f", test accuracy {task_info['test_accuracy']:.4f}" if "test_accuracy" in task_info else ""),
        f"- components: {info['n_components']} ({', '.join(f'{v} {k}' for k, v in info['components_by_kind'].items())})",
        f"- examples attributed: {info['n_examples']}",
        f"- training masks: {ev['n_masks']} at alpha = {ev['alpha']:g}; estimator: {ev['method']}",
        "",
        "| alpha | held-out masks | mean corr. | median corr. | mean rank corr. | MAE |",
        "|---|---|---|---|---|---|",
    ]
    for alpha, r in ev["by_alpha"].items():
        lines.append(f"| {alpha} | {r['n_masks']} | {r['mean_correlation']:.3f} | {r['median_correlation']:.3f} | "
                     f"{r['mean_rank_correlation']:.3f} | {r['mean_absolute_error']:.3f} |")
    seconds = _step_seconds(timings)
    if seconds:
        lines += ["", "| step | wall seconds |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in seconds.items()]
    lines += ["", f"![per-example correlations]({plot.relative_to(Path(out).parent)})", ""]
    text = "\n".join(lines)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return text


def _load_run(run_dir: str | Path) -> tuple[Task, ComponentSet]:
    """The saved task and component list of a run, checked against what `prepare` recorded."""
    info = run_info(run_dir)
    task = load_saved_task(_run_file(run_dir, "task.pt"))
    components = ComponentSet.load(_run_file(run_dir, "components.json"))
    if model_fingerprint(task.model) != info["model_fingerprint"] or components.fingerprint != info["components_fingerprint"]:
        raise RuntimeError(f"{run_dir}: task.pt or components.json changed after prepare; rerun the prepare step")
    return task, components


def baseline(run_dir: str | Path, out: str | Path, *, method: str, ablation: str, output_fn: str | None,
             masks_per_pass: int, max_batch: int, n_steps: int, device: str, threads: int | None = None) -> dict:
    """Attributions of one baseline method (coar.baselines), written like COAR's ("1 = ablated")."""
    from coar import baselines

    if threads:
        torch.set_num_threads(threads)
    expect = run_expect(run_dir)
    task, components = _load_run(run_dir)
    fn_name = output_fn or task.output_fn
    start = time.perf_counter()
    result = baselines.attribute(method, task.model.to(resolve_device(device)), components, task.inputs, task.labels,
                                 resolve_output_fn(fn_name), mode=ablation, reference_inputs=task.reference_inputs,
                                 masks_per_pass=masks_per_pass, max_batch=max_batch, n_steps=n_steps)
    seconds = time.perf_counter() - start
    h5format.write_attributions(out, result.weight, result.bias, np.zeros(len(result.bias)), components.table(),
                                task.example_ids, {
        "encoding": h5format.ENCODING, "solver": "coar.baselines", "method": method,
        "n_masks": len(components) + 1 if method == "loo" else 0, "ablation": ablation, "output_fn": fn_name,
        **{k: expect[k] for k in ("model_fingerprint", "components_fingerprint", "examples_fingerprint")},
    })
    return {"method": method, "seconds": seconds}


def _read_heldout(run_dir: str | Path, heldout: dict[float, str | Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(masks, outputs) of every held-out file, keyed by alpha as text, in alpha order."""
    expect = run_expect(run_dir)
    return {f"{alpha:g}": _read_rows(path, {**expect, "alpha": alpha}) for alpha, path in sorted(heldout.items())}


def _read_methods(run_dir: str | Path, attributions: dict[str, str | Path]) -> dict[str, h5format.Attributions]:
    """Every method's attributions file, checked to belong to this run."""
    expect = run_expect(run_dir)
    fingerprints = {k: expect[k] for k in ("model_fingerprint", "components_fingerprint", "examples_fingerprint")}
    return {method: h5format.read_attributions(path, expect=fingerprints) for method, path in attributions.items()}


def compare(run_dir: str | Path, attributions: dict[str, str | Path], heldout: dict[float, str | Path],
            train_alpha: float, out: str | Path, table: str | Path) -> dict:
    """Score COAR and the baselines on the same held-out masks: comparison.json and a Markdown table."""
    from coar.evaluate import compare as compare_methods, correlation_table

    methods = _read_methods(run_dir, attributions)
    ids = next(iter(methods.values())).example_ids
    by_method = compare_methods({m: (a.weight, a.bias) for m, a in methods.items()}, _read_heldout(run_dir, heldout), ids)
    train = f"{train_alpha:g}"
    result = {
        "alpha": train,
        "methods": list(by_method),
        "alphas": list(next(iter(by_method.values()))),
        "mean_correlation": {m: {a: r["mean_correlation"] for a, r in by_alpha.items()} for m, by_alpha in by_method.items()},
        "by_method": by_method,
    }
    write_json(out, result)
    text = "\n".join([
        f"# Mean held-out correlation per method and alpha: run `{Path(run_dir).name}`",
        "",
        f"Pearson correlation, per example, of predicted and true outputs across held-out masks; "
        f"mean over {len(ids)} examples. Training alpha {train}.",
        "",
        correlation_table(by_method, train),
        "",
    ])
    with atomic_path(table) as tmp:
        tmp.write_text(text)
    return result


FIGURES = ("correlation_table.png", "correlation_distributions.png", "predicted_vs_true.png",
           "layer_attributions.png", "step_timings.png")


def figures(run_dir: str | Path, comparison: str | Path, attributions: dict[str, str | Path],
            heldout: dict[float, str | Path], timings: Sequence[str | Path], plots_dir: str | Path,
            examples: int = 4) -> list[Path]:
    """The report's figures (FIGURES, as PNG in `plots_dir`).

    The first method in `attributions` (COAR) picks the scatter plots' examples (its worst,
    best and evenly spaced ranks between) and gives the per-layer sums.
    """
    from coar import plots
    from coar.evaluate import module_totals

    result = json.loads(Path(comparison).read_text())
    train, plots_dir = result["alpha"], Path(plots_dir)
    paths = [plots_dir / name for name in FIGURES]
    plots.correlation_table(result["mean_correlation"], train, paths[0])
    plots.correlation_distributions({m: r[train]["correlations"] for m, r in result["by_method"].items()}, train, paths[1])

    methods = _read_methods(run_dir, attributions)
    reference = next(iter(methods.values()))
    masks, outputs = _read_heldout(run_dir, heldout)[train]
    r = np.array([np.nan if v is None else v for v in result["by_method"][next(iter(methods))][train]["correlations"]])
    ranked = np.argsort(np.where(np.isfinite(r), r, -np.inf))
    picks = ranked[np.linspace(0, len(ranked) - 1, min(examples, len(ranked))).round().astype(int)]
    plots.predicted_vs_true(outputs[:, picks], {m: predict(a.weight[picks], a.bias[picks], masks) for m, a in methods.items()},
                            [reference.example_ids[i] for i in picks], paths[2])
    plots.layer_attributions(module_totals(reference.weight, [c[0] for c in reference.components]), paths[3])
    plots.step_timings(_step_seconds(timings), paths[4])
    return paths


def edit(run_dir: str | Path, task: str, params: dict, threads: int | None = None) -> dict:
    """Run COAR-Edit task `task` (coar.edit_tasks) and write its results into <run_dir>/edits/<task>/."""
    from coar.edit_tasks import run_task

    if threads:
        torch.set_num_threads(threads)
    return run_task(task, params, Path(run_dir) / "edits" / task)
