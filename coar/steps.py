"""One function per workflow step. Each rule (and each `coar` subcommand) calls one of these.

A run directory holds what `prepare` made: the task's weights and examples as data
(coar.saved_task: `weights.safetensors`, `examples.safetensors`, `example_ids.json`),
`components.json` and `prepare.json` (task spec, info and fingerprints). Every later step checks
that what it reads was made for this run: fingerprints and sizes against prepare.json, and how
the data were made (alpha, seed, ablation, output function, precision) against the values the
step is given from the config.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import h5py
import numpy as np
import torch

import coar
from coar import h5format, saved_task
from coar.ablation import unit_fills
from coar.atomic import atomic_path, write_json
from coar.batching import resolve_max_batch
from coar.components import discover
from coar.config import check_masks_for_method
from coar.constants import BASELINE_METHODS, DEFAULT_MASKS_PER_PASS, DEFAULT_MAX_BATCH, SURROGATE_KINDS
from coar.evaluate import compare as compare_methods
from coar.exactness import OnProblem, check_components
from coar.examples import first_inputs, stack
from coar.finite import nonfinite_problem
from coar.fastpath import FastPath, prepare as prepare_fast
from coar.forward import check_pass_rows, run_masked
from coar.masks import count_rows_in, sample_masks, shard_ranges
from coar.outputs import resolve_output_fn
from coar.precision import autocast, check_precision
from coar.rounds import StopRule, judge, new_stream, read_score, score_stream, write_score
from coar.run import COMPONENTS, FINGERPRINTS, PREPARE, PROVENANCE, Run
from coar.saved_task import LoaderOptions
from coar.task import check_labels, load_task

if TYPE_CHECKING:  # drawing loads matplotlib: only the steps that draw import coar.report
    from coar.report import FigurePaths


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when a GPU is visible; 'cuda' without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch sees no GPU; use device: cpu or auto")
    return torch.device(device)


def prepare(spec: str, params: dict, kinds: str | Sequence[str], include: Sequence[str], exclude: Sequence[str],
            run_dir: str | Path, masks: int | None = None, method: str | None = None,
            loader: LoaderOptions = LoaderOptions(), unreachable: OnProblem = "error",
            masks_per_pass: int = DEFAULT_MASKS_PER_PASS, max_batch: int | str = DEFAULT_MAX_BATCH) -> dict:
    """Build the task, discover its components and save both with their fingerprints.

    A dry pass on two examples (coar.exactness) first checks that every component group can be
    ablated exactly; `unreachable` says whether those that cannot stop prepare ("error") or are
    dropped with a warning ("drop", listed in prepare.json). Given the run's `masks` and solver
    `method`, OLS with masks <= components is refused now, before anything is saved or collected
    (the number of components is first known here). One pass at the collection's real rows
    (`masks_per_pass`, `max_batch`; coar.forward.check_pass_rows) refuses a model whose outputs
    change with the batch size. The memory and disk the run needs at its real sizes are checked
    next, before any collection (coar.resources.check_prepared_run).
    """
    start = time.perf_counter()
    task = load_task(spec, params)
    check_labels(task)
    components = discover(task.model, kinds, include, exclude)
    components, problems = check_components(task.model, components, first_inputs(task.example_source(), 2), unreachable)
    if method is not None and masks is not None:
        check_masks_for_method(masks, method, len(components))
    source = task.example_source()
    rows = resolve_max_batch(max_batch, task.model, first_inputs(source, 1), torch.device("cpu"))
    check_pass_rows(task.model, components, source, task.output, masks_per_pass=masks_per_pass, max_batch=rows)
    run_dir = Path(run_dir)
    saved = saved_task.save(task, run_dir, LoaderOptions(loader.workers, pin_memory=False))  # one pass on the CPU: no pinning, no cache
    with atomic_path(run_dir / COMPONENTS) as tmp:
        components.save(tmp)
    info = {
        "task": spec,
        "task_params": params,
        "task_info": task.info,
        "output_fn": task.output_fn,
        "n_examples": task.n_examples,
        "n_components": len(components),
        "dropped_components": [{"module": m, "kind": k, "reason": r} for (m, k), r in problems.items()],
        "components_by_kind": {k: sum(g.size for g in components.groups if g.kind == k) for k in {g.kind for g in components.groups}},
        "components_fingerprint": components.fingerprint,
        **saved,
        "coar_version": coar.__version__,
        "seconds": time.perf_counter() - start,
    }
    write_json(run_dir / PREPARE, info)
    return info


def collect(run_dir: str | Path, out: str | Path, *, task_spec: str, task_params: dict, shard: int, shards: int = 1,
            masks: int | None = None, rows: tuple[int, int] | None = None, alpha: float, seed: int,
            ablation: str, output_fn: str | None, masks_per_pass: int, max_batch: int | str, device: str,
            purpose: str = "train", stream: int | None = None, threads: int | None = None, precision: str = "fp32",
            loader: LoaderOptions = LoaderOptions(), fast_path: FastPath = FastPath()) -> None:
    """Sample shard `shard` of the masks, run the ablated model on them, write the shard file.

    The shard holds mask rows `rows` ([start, stop)), or, without `rows`, its part of `masks`
    split into `shards` equal shards (coar.masks.shard_ranges).
    The task is the config's (`task_spec`, `task_params`); a run folder whose prepare.json names
    another is refused before any task code runs (Run.reopen).
    Masks come from the random stream (seed, purpose, stream), stream defaulting to the shard
    index, so each shard is reproducible on its own; held-out masks are independent draws, and
    collecting them needs no training data (evaluate counts coincidences with training masks).
    Outputs that are NaN or infinite are refused, naming the masks and examples.
    `precision` runs the passes under autocast; `fast_path` (coar.fastpath) transforms the model
    without changing its ablated outputs; `max_batch` "auto" sizes passes to the device (coar.batching).
    """
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    check_precision(precision, dev)
    if (rows is None) == (masks is None):
        raise ValueError("give a shard's rows, or the total masks (and shards) to split")
    start, stop = rows if rows is not None else shard_ranges(masks, shards)[shard]
    if not 0 <= start < stop:
        raise ValueError(f"a shard's rows must be START:STOP with 0 <= START < STOP, got {start}:{stop}")
    run = Run(run_dir)
    expect = run.expect
    task, components = run.reopen(task_spec, task_params, _loader_for(loader, dev)), run.components
    x = sample_masks(seed, shard if stream is None else stream, stop - start, len(components), alpha, purpose)
    fn_name = output_fn or task.output_fn
    model = task.model.to(dev)
    fast = prepare_fast(model, components, unit_fills(model, components, ablation, task.reference_inputs), fast_path)
    first = first_inputs(task.examples, 1)
    pass_rows = resolve_max_batch(max_batch, fast.model, first, dev, lambda: autocast(precision, dev))
    y = run_masked(fast.model, components, x, task.examples, None, resolve_output_fn(fn_name),
                   masks_per_pass=masks_per_pass, max_batch=pass_rows, mode=ablation, fills=fast.fills,
                   progress=True, precision=precision)
    ids = run.example_ids
    if problem := nonfinite_problem(y, range(start, stop), ids, "masks (rows)", "examples"):
        raise ValueError(f"the ablated model gave {problem}; nothing was written. Check the model and output "
                         "function (the fit and the scores need finite outputs)")
    meta = {**expect, "seed": seed, "alpha": alpha, "shard": shard, "row_start": start, "row_stop": stop,
            "output_fn": fn_name, "ablation": ablation, "precision": precision, "coar_version": coar.__version__,
            "encoding": h5format.ENCODING}
    h5format.write_shard(out, x, y, meta)


def merge(run_dir: str | Path, shard_paths: Sequence[str | Path], out: str | Path, masks: int,
          expected: dict | None = None) -> None:
    """Check that the shards belong to this run, were made as `expected` (see `provenance`) and
    tile all m rows, then merge them."""
    h5format.merge_shards(shard_paths, out, {**Run(run_dir).expect, **(expected or {})}, masks)


def fit(run_dir: str | Path, data: str | Path, out: str | Path, *, method: str, backend: str, chunk_rows: int,
        example_block: int | None = None, memory_budget: float | None = None, expected: dict | None = None) -> dict:
    """Fit one linear model per example on the merged dataset (streamed) and save it, block of
    examples by block; memory_budget in GB (None: from the job's memory limits). The data must
    have been made as `expected` (see `provenance`); the attributions record how they were made."""
    run = Run(run_dir)
    expect = {**run.expect, **(expected or {})}
    made = h5format.run_attrs_of(data, expect)
    return fit_dataset(data, out, expect, run.components.table(), run.example_ids, method=method, backend=backend,
                       chunk_rows=chunk_rows, example_block=example_block, memory_budget=memory_budget,
                       provenance={k: made[k] for k in PROVENANCE})


def fit_dataset(data: str | Path, out: str | Path, expect: dict, components: Sequence[tuple[str, int, str]],
                example_ids: Sequence[str], *, method: str, backend: str, chunk_rows: int,
                example_block: int | None = None, memory_budget: float | None = None,
                provenance: dict | None = None) -> dict:
    """The fit step given the run's expectations, component table and example ids: plan by the
    memory budget (printed), then solve and write attributions.h5 block of examples by block,
    with `provenance` (how the data were made) among its attributes."""
    from coar import solver

    start = time.perf_counter()
    reader = h5format.RowReader(data, chunk_rows, expect)
    plan = solver.plan_fit(expect["n_components"], expect["n_examples"], method, backend=backend,
                           example_block=example_block,
                           max_memory_bytes=None if memory_budget is None else int(memory_budget * 1e9))
    print(f"coar fit: {plan}", flush=True)
    attrs = _fit_attrs(method, backend, reader.n_rows, provenance or {}, expect)
    with h5format.attributions_writer(out, components, example_ids, attrs) as writer:
        blocks = solver.fit_blocks(reader, method=method, backend=backend, plan=plan, progress=lambda text: print(
            f"coar fit: {text} after {time.perf_counter() - start:.1f} s", flush=True))
        for first, block in blocks:
            writer.write(first, block.weight, block.bias, block.lam)
            print(f"coar fit: examples {first}..{first + len(block.bias)} written after "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
    return {"seconds": time.perf_counter() - start, "method": method, "n_masks": reader.n_rows,
            "solver_path": "closed_form" if plan.closed_form else "iterative", "example_block": plan.example_block,
            "n_blocks": plan.n_blocks, "memory_budget": str(plan.budget)}


def fit_round(run_dir: str | Path, shards: Sequence[str | Path], out_state: str | Path, out_score: str | Path, *,
              round: int, previous: str | Path | None, heldout: str | Path, rule: StopRule, method: str, backend: str,
              chunk_rows: int, example_block: int | None = None, memory_budget: float | None = None,
              expected: dict | None = None) -> dict:
    """One round of a `masks: auto` run (coar.rounds): the `previous` round's statistics (None for
    round 0) and this round's `shards`, solved, scored on the `heldout` masks at the training
    alpha and judged by `rule`. Writes the round's statistics (out_state) and its score and
    decision (out_score, JSON, with how the rows were made)."""
    from coar import solver

    run = Run(run_dir)
    expect = {**run.expect, **(expected or {})}
    if (previous is None) != (round == 0):
        raise ValueError(f"round {round} {'needs' if round else 'takes no'} previous round's statistics")
    if previous is None:
        stream = new_stream(run.n_components, run.n_examples, method, backend=backend, example_block=example_block,
                            max_memory_bytes=None if memory_budget is None else int(memory_budget * 1e9))
        before, first_row = None, 0
    else:
        state, before, meta = h5format.read_round_state(previous, {**expect, "round": round - 1, "method": method})
        stream, first_row = solver.SplitStream.from_state(state, backend=backend), meta["row_stop"]
    reader = h5format.RowReader(shards, chunk_rows, expect, first_row=first_row)
    made = reader.run_attrs
    if previous is not None:  # this round's rows continue the previous round's, made the same way
        h5format.check_expected(previous, meta, made)
    for X, Y in reader():
        stream.push(X, Y)
    masks = stream.offset
    correlation = score_stream(stream, method, *_read_rows(heldout, _heldout_expect(run.expect, expected, made["alpha"])))
    score = judge(round, masks, correlation, before, rule)
    h5format.write_round_state(out_state, stream.state(), correlation,
                               {**made, "round": round, "row_stop": masks, "method": method})
    write_score(out_score, score, {**made, "method": method}, out_state)
    print(f"coar fit-round: round {round}, {masks} masks: mean held-out correlation "
          f"{'not scored' if score.mean is None else f'{score.mean:.4f}'}; {'stop' if score.stop else 'go on'}: "
          f"{score.reason}", flush=True)
    return score.to_json()


def fit_state(run_dir: str | Path, state: str | Path, out: str | Path, *, method: str, backend: str,
              expected: dict | None = None) -> dict:
    """The fit step of a `masks: auto` run: solve the final round's statistics (`state`) and write
    attributions.h5 as `fit` does, the same bit for bit as a fixed run of as many masks."""
    from coar import solver

    start = time.perf_counter()
    run = Run(run_dir)
    expect = {**run.expect, **(expected or {})}
    stats, _, meta = h5format.read_round_state(state, {**expect, "method": method})
    train, val = solver.SplitStream.from_state(stats, backend=backend).finish()
    result = solver.fit_stats(train, method, val=val)
    attrs = _fit_attrs(method, backend, meta["row_stop"], {k: meta[k] for k in PROVENANCE}, expect)
    with h5format.attributions_writer(out, run.components.table(), run.example_ids, attrs) as writer:
        writer.write(0, result.weight, result.bias, result.lam)
    print(f"coar fit: {method} on the statistics of {meta['row_stop']} masks (round {meta['round']}) written after "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    return {"seconds": time.perf_counter() - start, "method": method, "n_masks": meta["row_stop"], "round": meta["round"]}


def _fit_attrs(method: str, backend: str, n_masks: int, provenance: dict, expect: dict) -> dict:
    """What attributions.h5 records of a fit: encoding, solver, method, masks, how the data were
    made (`provenance`) and the run's fingerprints (from `expect`)."""
    return {"encoding": h5format.ENCODING, "solver": f"coar.solver backend={backend}", "method": method,
            "n_masks": n_masks, **provenance, **{k: expect[k] for k in FINGERPRINTS}}


def fit_surrogate(run_dir: str | Path, data: str | Path, attributions: str | Path, out: str | Path, *, kind: str,
                  rank: int, penalty: float, chunk_rows: int, expected: dict | None = None) -> dict:
    """Fit a surrogate beyond linear COAR (coar.solver.surrogate) on the run's training rows,
    streamed from `data` in two passes of `chunk_rows` rows, with the basis from the run's fitted
    weights (`attributions`: its OLS when solver.method is ols, as ProjectedQuadratic.fit does;
    a ridge or lasso run's own weights otherwise, recorded as basis_method), and write
    surrogate.h5. The data and the attributions must be this run's, made as `expected`, and the
    attributions fitted on these very rows (as many masks)."""
    from coar.solver.surrogate import ProjectedQuadratic

    if kind not in SURROGATE_KINDS:
        raise ValueError(f"surrogate kind must be one of {SURROGATE_KINDS}, got {kind!r}")
    start = time.perf_counter()
    run = Run(run_dir)
    expect = {**run.expect, **(expected or {})}
    reader = h5format.RowReader(data, chunk_rows, expect)
    made = reader.run_attrs
    attr = run.read_attributions(attributions, {**(expected or {}), **{k: made[k] for k in PROVENANCE},
                                                "n_masks": reader.n_rows})
    model = ProjectedQuadratic(rank, penalty, threads=None).fit_chunks(reader, attr.weight)
    h5format.write_surrogate(out, model, {
        "kind": kind, "basis_method": attr.attrs["method"], **{k: made[k] for k in PROVENANCE},
        "coar_version": coar.__version__, "encoding": h5format.ENCODING, **run.fingerprints,
    })
    seconds = time.perf_counter() - start
    print(f"coar fit-surrogate: {kind} (rank {rank}, penalty {penalty:g}) on {model.n_masks_} masks, basis from the "
          f"{attr.attrs['method']} weights, written after {seconds:.1f} s", flush=True)
    return {"seconds": seconds, "kind": kind, "rank": rank, "penalty": penalty, "n_masks": model.n_masks_,
            "basis_method": attr.attrs["method"]}


def read_surrogate(run: Run, path: str | Path, expected: dict | None, train_alpha: float) -> h5format.SurrogateFile:
    """A run's surrogate.h5, refused unless made for this run (sizes, fingerprints) as `expected`
    at `train_alpha`."""
    return h5format.read_surrogate(path, {**run.expect, **(expected or {}), "alpha": train_alpha})


def _surrogate_info(found: h5format.SurrogateFile) -> dict:
    """What evaluation.json and comparison.json record of the surrogate they scored."""
    return {k: found.attrs[k] for k in ("kind", "rank", "penalty", "basis_method", "n_masks")}


def _read_rows(path: str | Path, expect: dict) -> tuple[np.ndarray, np.ndarray]:
    """All (masks, outputs) rows of a shard or dataset file, validated against `expect`; refused
    if an output is NaN or infinite (a correlation over such rows means nothing)."""
    blocks = list(h5format.iter_chunks(path, 1 << 16, expect))
    masks, outputs = np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])
    if problem := nonfinite_problem(outputs, range(len(outputs)), range(outputs.shape[1]), "masks (rows)", "examples (columns)"):
        raise ValueError(f"{path} holds {problem}; held-out outputs must be finite: fix the cause and rerun its collection")
    return masks, outputs


def _heldout_expect(expect: dict, expected: dict | None, alpha: float) -> dict:
    """What a held-out file at `alpha` must carry: this run's fingerprints, `expected` but its alpha."""
    return {**expect, **(expected or {}), "alpha": alpha}


def _coincidences(rows: dict[str, tuple[np.ndarray, np.ndarray]], training_data: str | Path | None,
                  expect: dict) -> dict[str, int | None]:
    """Per alpha, how many held-out masks equal a mask of the merged training dataset (None
    without one); they are kept, so held-out masks stay independent draws."""
    if training_data is None:
        return {alpha: None for alpha in rows}
    # Validated first: a virtual dataset would read a missing shard's masks as zeros.
    h5format.RowReader(training_data, 1, expect)
    with h5py.File(training_data, "r", locking=False) as f:
        return {alpha: count_rows_in(masks, f["masks"]) for alpha, (masks, _) in rows.items()}


def evaluate(run_dir: str | Path, attributions: str | Path, heldout: dict[float, str | Path], train_alpha: float,
             out: str | Path, expected: dict | None = None, training_data: str | Path | None = None,
             surrogate: str | Path | None = None) -> dict:
    """Score the attributions on held-out masks at each alpha; write evaluation.json.

    The attributions must have been made at `train_alpha` and as `expected` (see `provenance`);
    evaluation.json reports the values they recorded. Scored by `compare` (COAR alone), so
    evaluate and compare share one scoring path. Given the merged `training_data`, the held-out
    masks equal to a training mask are counted per alpha. Given the run's `surrogate`
    (surrogate.h5, fitted on as many masks as the attributions), it is scored on the same
    held-out masks: evaluation.json's `surrogate` holds what it is and its scores per alpha.
    """
    run = Run(run_dir)
    attr = run.read_attributions(attributions, {**(expected or {}), "alpha": train_alpha})
    rows = _read_heldout(run, heldout, expected)
    scores = compare_methods({"coar": (attr.weight, attr.bias)}, rows, run.example_ids)["coar"]
    coincident = _coincidences(rows, training_data, {**run.expect, **(expected or {}), "alpha": train_alpha})
    by_alpha = {alpha: {**scores[alpha], "coincident_with_training": coincident[alpha]} for alpha in rows}
    main = by_alpha[f"{train_alpha:g}"]
    result = {
        **{k: attr.attrs[k] for k in PROVENANCE},
        "method": attr.attrs["method"],
        "n_masks": attr.attrs["n_masks"],
        "mean_correlation": main["mean_correlation"],
        "median_correlation": main["median_correlation"],
        "undefined_correlations": main["undefined_correlations"],
        "n_heldout_masks": main["n_masks"],
        "heldout_coincident_with_training": main["coincident_with_training"],
        "by_alpha": by_alpha,
    }
    if surrogate is not None:
        found = read_surrogate(run, surrogate, {**(expected or {}), "n_masks": attr.attrs["n_masks"]}, train_alpha)
        surrogate_scores = compare_methods({"surrogate": found.model(threads=None)}, rows, run.example_ids)["surrogate"]
        result["surrogate"] = {**_surrogate_info(found),
                               "mean_correlation": surrogate_scores[f"{train_alpha:g}"]["mean_correlation"],
                               "by_alpha": surrogate_scores}
    write_json(out, result)
    return result


def summarize(run_dir: str | Path, evaluation: str | Path, timings: Sequence[str | Path], out: str | Path,
              plot: str | Path, train_alpha: float | None = None, expected: dict | None = None,
              rounds: Sequence[str | Path] = (), curve: str | Path | None = None) -> str:
    """A short Markdown summary of the run at `out` and a correlation histogram at `plot` (coar.report);
    for a `masks: auto` run its `rounds`' scores (fit-round, in order) as a table and a curve at `curve`.

    evaluation.json and the rounds must record the provenance the config gives (`expected`, alpha
    `train_alpha`): a stale one is refused, naming key and both values, rather than presented as
    this config's."""
    from coar import report

    run = Run(run_dir)
    made_with = _made_with(expected, train_alpha)
    result = json.loads(Path(evaluation).read_text())
    h5format.check_expected(evaluation, result, made_with)
    scores = []
    for i, path in enumerate(rounds):
        scores.append(read_score(path, {**made_with, **run.expect, "round": i}))
    return report.write_summary(run.name, run.info, result, timings, out, plot, scores, curve)


def _made_with(expected: dict | None, train_alpha: float | None) -> dict:
    """The provenance a report's inputs must record: `expected` and, given, the training alpha."""
    return {**(expected or {}), **({} if train_alpha is None else {"alpha": train_alpha})}


def _loader_for(loader: LoaderOptions, device: torch.device) -> LoaderOptions:
    """Pinned memory only helps copies to a GPU (and warns without one)."""
    return LoaderOptions(loader.workers, loader.pin_memory and device.type == "cuda", loader.cache_mb)


def baseline(run_dir: str | Path, out: str | Path, *, task_spec: str, task_params: dict, method: str, ablation: str,
             output_fn: str | None, masks_per_pass: int, max_batch: int | str, n_steps: int, device: str,
             threads: int | None = None, loader: LoaderOptions = LoaderOptions()) -> dict:
    """Attributions of one baseline method (coar.baselines), written like COAR's ("1 = ablated"),
    of the config's task (`task_spec`, `task_params`; see Run.reopen); `max_batch` "auto" sizes
    passes to the device as in collect (coar.batching)."""
    from coar import baselines

    if threads:
        torch.set_num_threads(threads)
    run = Run(run_dir)
    dev = resolve_device(device)
    task, components = run.reopen(task_spec, task_params, _loader_for(loader, dev)), run.components
    ids = run.example_ids
    inputs, labels = stack(task.examples)  # the baselines take tensors: all examples in memory
    fn_name = output_fn or task.output_fn
    model = task.model.to(dev)
    rows = resolve_max_batch(max_batch, model, inputs[:1], dev)
    start = time.perf_counter()
    result = baselines.attribute(method, model, components, inputs, labels,
                                 resolve_output_fn(fn_name), mode=ablation, reference_inputs=task.reference_inputs,
                                 masks_per_pass=masks_per_pass, max_batch=rows, n_steps=n_steps)
    seconds = time.perf_counter() - start
    found = np.column_stack([result.weight, result.bias])
    columns = [f"{m}[{u}]" for m, u, _ in components.table()] + ["bias"]
    if problem := nonfinite_problem(found, ids, columns, "examples", "components"):
        raise ValueError(f"baseline {method} gave {problem}; nothing was written: check the model and output function")
    h5format.write_attributions(out, result.weight, result.bias, np.zeros(len(result.bias)), components.table(),
                                ids, {
        "encoding": h5format.ENCODING, "solver": "coar.baselines", "method": method,
        "n_masks": len(components) + 1 if method == "loo" else 0, "ablation": ablation, "output_fn": fn_name,
        "precision": "fp32",
        **run.fingerprints,
    })
    return {"method": method, "seconds": seconds}


def _read_heldout(run: Run, heldout: dict[float, str | Path],
                  expected: dict | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(masks, outputs) of every held-out file, keyed by alpha as text, in alpha order, each
    checked to be made as `expected` at its own alpha."""
    return {f"{alpha:g}": _read_rows(path, _heldout_expect(run.expect, expected, alpha))
            for alpha, path in sorted(heldout.items())}


def _read_methods(run: Run, attributions: dict[str, str | Path], expected: dict,
                  train_alpha: float) -> dict[str, h5format.AttributionsFile]:
    """Every method's attributions file, checked by Run.read_attributions: this run's components
    and example ids, and made as `expected` (COAR's at `train_alpha`; a baseline's by what
    applies to it, run.BASELINE_PROVENANCE). A baseline's file must be of the method it is named."""
    methods = {method: run.read_attributions(path, {**expected, "alpha": train_alpha})
               for method, path in attributions.items()}
    for method, found in methods.items():
        if found.attrs["method"] in BASELINE_METHODS and found.attrs["method"] != method:
            raise h5format.FormatError(f"{attributions[method]} holds attributions of {found.attrs['method']}, "
                                       f"not of {method}; pass the right file")
    return methods


def compare(run_dir: str | Path, attributions: dict[str, str | Path], heldout: dict[float, str | Path],
            train_alpha: float, out: str | Path, table: str | Path, expected: dict | None = None,
            surrogate: str | Path | None = None) -> dict:
    """Score COAR and the baselines on the same held-out masks: comparison.json (recording, as
    `made_with`, the provenance every file read was checked against, and COAR's method and
    n_masks) and a Markdown table. Given the run's `surrogate` (surrogate.h5, fitted on COAR's
    masks), it is scored beside them as method "surrogate", right after COAR, and comparison.json's
    `surrogate` says what it is."""
    from coar import report

    run = Run(run_dir)
    methods = _read_methods(run, attributions, expected or {}, train_alpha)
    ids = run.example_ids
    models = {m: (a.weight, a.bias) for m, a in methods.items()}
    found = None
    if surrogate is not None:
        fitted = [a.attrs["n_masks"] for a in methods.values() if a.attrs["method"] not in BASELINE_METHODS]
        found = read_surrogate(run, surrogate, {**(expected or {}), **({"n_masks": fitted[0]} if fitted else {})},
                               train_alpha)
        models = _after_first(models, "surrogate", found.model(threads=None))
    by_method = compare_methods(models, _read_heldout(run, heldout, expected), ids)
    train = f"{train_alpha:g}"
    result = {
        "alpha": train,
        "made_with": {**_made_with(expected, train_alpha),
                      **{k: a.attrs[k] for a in methods.values() if a.attrs["method"] not in BASELINE_METHODS
                         for k in ("method", "n_masks")}},
        "methods": list(by_method),
        "alphas": list(next(iter(by_method.values()))),
        "mean_correlation": {m: {a: r["mean_correlation"] for a, r in by_alpha.items()} for m, by_alpha in by_method.items()},
        "by_method": by_method,
        **({"surrogate": _surrogate_info(found)} if found is not None else {}),
    }
    write_json(out, result)
    report.write_text(table, report.comparison_markdown(Path(run_dir).name, by_method, train, len(ids)))
    return result


def _after_first(models: dict, name: str, model: object) -> dict:
    """`models` with `name` inserted right after the first (COAR)."""
    items = list(models.items())
    return dict([*items[:1], (name, model), *items[1:]])


def figures(run_dir: str | Path, comparison: str | Path, attributions: dict[str, str | Path],
            heldout: dict[float, str | Path], timings: Sequence[str | Path], paths: FigurePaths,
            train_alpha: float, expected: dict | None = None, examples: int = 4) -> FigurePaths:
    """The report's figures (coar.report.draw_figures), each at its path in `paths`; the first
    method in `attributions` (COAR) picks the scatter plots' examples and gives the per-layer sums.
    Every file read is checked as compare checks it (made as `expected`, COAR's at `train_alpha`),
    and the comparison must record the same (a stale one is refused, not drawn)."""
    from coar import report

    run = Run(run_dir)
    result = json.loads(Path(comparison).read_text())
    h5format.check_expected(comparison, result.get("made_with", {}), _made_with(expected, train_alpha))
    masks, outputs = _read_heldout(run, heldout, expected)[f"{train_alpha:g}"]
    return report.draw_figures(result, _read_methods(run, attributions, expected or {}, train_alpha), masks, outputs,
                               report.step_seconds(timings), paths, examples)
