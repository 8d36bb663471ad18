"""The two editing steps of the workflow, over a run's own files (docs/user-guide.md "Editing").

`plan` reads the run's attributions of the target and reference examples, scores every
component it may touch (Welch t, coar.edit.planning) and writes `plan.json`: the ranked
components and the attributions' predicted mean change of the target and reference outputs for
every k. `apply` sweeps k on the task's validation examples (every k one mask row of one
`run_masked` call), picks k, checks the realised effect against the tolerance and the
prediction, and writes the edited weights, `ablated.json`, `report.json` and a plot.
Neither collects attributions again.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from coar.atomic import write_json
from coar.components import ComponentSet
from coar.constants import DEFAULT_MASKS_PER_PASS, DEFAULT_MAX_BATCH
from coar.edit.plots import metric_vs_k
from coar.edit.planning import apply_edit, by_layer, choose_k, describe, prefix_masks, rank, welch_scores
from coar.edit.selectors import Pool, needs_outputs, select, validation_ids
from coar.edit.spec import AUTO, EditConfigError, EditSpec
from coar.examples import Examples, TensorExamples
from coar.forward import run_masked
from coar.h5format import AttributionsFile, FormatError
from coar.outputs import resolve_output_fn
from coar.run import Run
from coar.saved_task import PreparedTask
from coar.steps import resolve_device

log = logging.getLogger(__name__)

PLAN_FORMAT = "coar-edit-plan/1"
REPORT_FORMAT = "coar-edit-report/1"
RANKING = {"raise": "fix", "lower": "forget"}  # coar.edit.planning.rank's names: highest or lowest score first
PLAN, WEIGHTS, ABLATED, REPORT, PLOT = "plan.json", "weights.safetensors", "ablated.json", "report.json", "metric_vs_k.png"


def read_run_attributions(spec: EditSpec, run: Run, path: str | Path, expected: dict | None = None) -> AttributionsFile:
    """The run's attributions, refused naming the edit when missing or made for another run."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"edit {spec.name!r}: {path} does not exist: run {run.name!r} has no attributions "
                                "yet; run the fit step first (snakemake ... attributions.h5)")
    try:
        return run.read_attributions(path, expected or {})  # this run's sizes, fingerprints, names and ids
    except FormatError as error:
        raise FormatError(f"edit {spec.name!r}: {error}") from None


def allowed_components(spec: EditSpec, components: ComponentSet) -> np.ndarray:
    """(N,) bool: the components whose module matches one of the edit's `components` patterns."""
    allowed = np.zeros(len(components), dtype=bool)
    for group in components.groups:
        if any(fnmatch.fnmatchcase(group.module, p) for p in spec.components):
            allowed[group.start : group.stop] = True
    if not allowed.any():
        raise EditConfigError(f"edit {spec.name!r}, key 'components': {spec.components} match none of the run's "
                              f"modules, e.g. {[g.module for g in components.groups[:3]]}")
    return allowed


def sweep_ks(spec: EditSpec, n_allowed: int) -> list[int]:
    """k = 0 (the unedited model), 1, ..., the edit's k or k_max (at most the components it may touch)."""
    if spec.k != AUTO and spec.k > n_allowed:
        raise EditConfigError(f"edit {spec.name!r}, key 'k': {spec.k} is more than the {n_allowed} components "
                              f"matching {spec.components}")
    return list(range((spec.k if spec.k != AUTO else min(spec.k_max, n_allowed)) + 1))


def predicted_changes(weight: np.ndarray, order: np.ndarray, ks: list[int]) -> np.ndarray:
    """(n x len(ks)): the attributions' predicted output change of each example when the first k of
    `order` are ablated (encoding 1 = ablated: the sum of their weights)."""
    cumulative = np.cumsum(np.asarray(weight, np.float64)[:, order[: ks[-1]]], axis=1)
    return np.concatenate([np.zeros((len(weight), 1)), cumulative], axis=1)[:, ks]


def _labels(examples: Examples) -> np.ndarray:
    return np.concatenate([y.cpu().numpy() for _, y in examples.batches(4096)])


def _outputs(prepared: PreparedTask, components: ComponentSet, masks: np.ndarray, examples: Examples,
             output_fn: str, mode: str, masks_per_pass: int, max_batch: int) -> np.ndarray:
    """Outputs of the ablated model (masks x examples): one `run_masked` call."""
    return run_masked(prepared.model, components, masks, examples, None, resolve_output_fn(output_fn),
                      masks_per_pass=masks_per_pass, max_batch=max_batch, mode=mode,
                      reference_inputs=prepared.reference_inputs)


def _reopen(run: Run, task: tuple[str, dict], device: str) -> PreparedTask:
    """The run's task, from the config's (spec, params), on `device`."""
    prepared = run.reopen(*task)
    prepared.model.to(resolve_device(device))
    return prepared


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def plan(run_dir: str | Path, spec: EditSpec, attributions: str | Path, out: str | Path, *,
         task: tuple[str, dict], expected: dict | None = None, device: str = "cpu", max_batch: int = DEFAULT_MAX_BATCH) -> dict:
    """Rank the components for `spec` from the run's attributions and write plan.json (see module doc)."""
    run = Run(run_dir)
    allowed = allowed_components(spec, run.components)
    ks = sweep_ks(spec, int(allowed.sum()))
    attr = read_run_attributions(spec, run, attributions, expected)
    output_fn = attr.attrs["output_fn"]
    prepared = _reopen(run, task, device)
    pool = Pool("the run's examples", run.example_ids, _labels(prepared.examples), prepared.groups)
    if needs_outputs(spec):
        pool.outputs = _outputs(prepared, run.components, np.zeros((1, len(run.components)), bool),
                                prepared.examples, output_fn, attr.attrs["ablation"], 1, max_batch)[0]
    target, reference = select(spec, pool)
    scores = welch_scores(attr.weight[target], attr.weight[reference])
    candidates = np.flatnonzero(allowed)
    order = candidates[rank(scores[candidates], RANKING[spec.direction])]
    predicted = predicted_changes(attr.weight, order, ks)
    result = {
        "format": PLAN_FORMAT,
        "edit": spec.as_dict(),
        "run": run.name,
        **run.fingerprints,
        "output_fn": output_fn,
        "target": {"n": len(target), "ids": [run.example_ids[i] for i in target]},
        "reference": {"n": len(reference), "ids": [run.example_ids[i] for i in reference]},
        "n_candidates": len(candidates),
        "ks": ks,
        "ranked": describe(run.components, order[: ks[-1]], scores),
        "predicted_mean_change": {"target": predicted[target].mean(0).tolist(),
                                  "reference": predicted[reference].mean(0).tolist()},
    }
    write_json(out, result)
    log.info("edit %s: %d target and %d reference examples, %d candidate components; predicted target change "
             "at k=%d: %.3f", spec.name, len(target), len(reference), len(candidates), ks[-1],
             result["predicted_mean_change"]["target"][-1])
    return result


def read_plan(spec: EditSpec, run: Run, path: str | Path) -> dict:
    """plan.json of this edit and this run; refused, saying to rerun the plan, otherwise."""
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise FormatError(f"edit {spec.name!r}: {path} cannot be read as a plan ({error}); rerun edit_plan") from None
    if not isinstance(result, dict) or result.get("format") != PLAN_FORMAT:
        raise FormatError(f"edit {spec.name!r}: {path} is not a {PLAN_FORMAT} file; rerun edit_plan")
    stale = [k for k, v in {"edit": spec.as_dict(), **run.fingerprints}.items() if result.get(k) != v]
    if stale:
        raise FormatError(f"edit {spec.name!r}: {path} was planned for another {' and '.join(stale)} than this "
                          f"edit of run {run.name!r}; rerun edit_plan")
    return result


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined value (e.g. a correlation of constant values) is null."""
    return float(value) if np.isfinite(value) else None


def _metrics(before: np.ndarray, after: np.ndarray) -> dict:
    """Mean output and accuracy (fraction of outputs > 0, e.g. positive margins) before and after."""
    return {"n": len(before), "mean_output": [_finite(_mean(before)), _finite(_mean(after))],
            "accuracy": [_finite(_mean(before > 0)), _finite(_mean(after > 0))]}


def _checks(spec: EditSpec, reference_loss: float, predicted: float, realised: float, k: int) -> tuple[dict, list[str]]:
    """The tolerance and deviation checks of the chosen k, and a sentence per failed check."""
    ratio = realised / predicted if k and predicted else float("nan")
    checks = {"reference_accuracy_loss": reference_loss, "tolerance": spec.tolerance,
              "predicted_target_change": predicted, "realised_target_change": realised,
              "realised_over_predicted": _finite(ratio), "max_deviation": spec.max_deviation}
    problems = []
    if reference_loss > spec.tolerance + 1e-12:
        problems.append(f"the reference examples lose {reference_loss:.3f} accuracy on validation, more than "
                        f"the tolerance {spec.tolerance:g}")
    if k and not abs(ratio - 1) <= spec.max_deviation:
        problems.append(f"the realised mean change of the target output on validation ({realised:.3f}) is "
                        f"{ratio:.2f} times the predicted one ({predicted:.3f}), beyond max_deviation "
                        f"{spec.max_deviation:g}")
    checks["passed"] = not problems
    return checks, problems


def apply(run_dir: str | Path, spec: EditSpec, plan_path: str | Path, attributions: str | Path, out_dir: str | Path,
          *, task: tuple[str, dict], expected: dict | None = None, device: str = "cpu", masks_per_pass: int = DEFAULT_MASKS_PER_PASS,
          max_batch: int = DEFAULT_MAX_BATCH) -> dict:
    """Sweep k on validation, choose it, check it, write the edited model and its report (module doc)."""
    run = Run(run_dir)
    planned = read_plan(spec, run, plan_path)
    attr = read_run_attributions(spec, run, attributions, expected)
    ablation = attr.attrs["ablation"]  # the ablation the attributions predict, and the edit makes permanent
    prepared = _reopen(run, task, device)
    if prepared.validation is None:
        raise EditConfigError(f"edit {spec.name!r}: task {run.info['task']!r} gives no validation examples "
                              "(coar.task.Task validation_inputs, validation_labels); k is chosen and checked on them")
    components, output_fn, ks = run.components, planned["output_fn"], planned["ks"]
    order = np.asarray([r["index"] for r in planned["ranked"]], dtype=np.int64)
    inputs, labels = prepared.validation
    pool = Pool("the validation examples", validation_ids(len(labels)), labels.numpy(), prepared.validation_groups)
    if not needs_outputs(spec):
        select(spec, pool)  # refuse an empty or overlapping selection before any forward pass
    masks = prefix_masks(order, ks, len(components))
    outputs = _outputs(prepared, components, masks, TensorExamples(inputs, labels), output_fn, ablation,
                       masks_per_pass, max_batch)
    pool.outputs = outputs[0]
    target, reference = select(spec, pool)
    change = outputs - outputs[0]
    sign = 1.0 if spec.direction == "raise" else -1.0
    target_success = (sign * outputs[:, target] > 0).mean(1)
    reference_accuracy = (outputs[:, reference] > 0).mean(1)
    if spec.k == AUTO:
        choice = choose_k(ks, target_success, reference_accuracy, tolerance=spec.tolerance)
        index, rule = choice.index, choice.rule
    else:
        index, rule = len(ks) - 1, "k given in the config"
    k = ks[index]
    predicted_curve = planned["predicted_mean_change"]
    checks, problems = _checks(spec, float(reference_accuracy[0] - reference_accuracy[index]),
                               float(predicted_curve["target"][index]), float(change[index, target].mean()), k)
    for problem in problems:
        log.warning("edit %s: %s", spec.name, problem)
    if problems and spec.strict:
        raise RuntimeError(f"edit {spec.name!r} (strict: true): {'; '.join(problems)}; the edited model was not written")

    ablated = order[:k]
    reported = _outputs(prepared, components, masks[[0, index]], prepared.examples, output_fn, ablation, 2, max_batch)
    realised = reported[1] - reported[0]
    predicted = np.asarray(attr.weight, np.float64)[:, ablated].sum(1)
    position = {example: i for i, example in enumerate(run.example_ids)}
    reported_target = np.asarray([position[i] for i in planned["target"]["ids"]], dtype=np.int64)
    reported_reference = np.asarray([position[i] for i in planned["reference"]["ids"]], dtype=np.int64)
    role = np.full(len(realised), "other", dtype=object)
    role[reported_target], role[reported_reference] = "target", "reference"

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    edited = apply_edit(prepared.model, components, ablated, mode=ablation, reference_inputs=prepared.reference_inputs)
    with torch.no_grad():
        save_file({name: t.detach().cpu().contiguous().clone() for name, t in edited.state_dict().items()},
                  str(out_dir / WEIGHTS))
    scores = {r["index"]: r["score"] for r in planned["ranked"]}
    write_json(out_dir / ABLATED, {
        "edit": spec.name, "mode": ablation, "n_components": len(components),
        "components_fingerprint": components.fingerprint,
        "ablated": [{**r, "score": scores[r["index"]]} for r in describe(components, ablated)],
        "by_layer": by_layer(components, ablated),
    })
    ratio = {name: _finite(np.float64(_mean(realised[rows])) / _mean(predicted[rows])) if k else None
             for name, rows in (("target", reported_target), ("reference", reported_reference))}
    report = {
        "format": REPORT_FORMAT,
        "edit": spec.as_dict(),
        "run": run.name,
        "k": k,
        "rule": rule,
        "checks": checks,
        "problems": problems,
        "sweep": {"ks": ks, "validation_target_success": target_success.tolist(),
                  "validation_reference_accuracy": reference_accuracy.tolist(),
                  "realised_mean_change": {"target": change[:, target].mean(1).tolist(),
                                           "reference": change[:, reference].mean(1).tolist()},
                  "predicted_mean_change": predicted_curve},
        "metrics": {
            "target": _metrics(reported[0, reported_target], reported[1, reported_target]),
            "reference": _metrics(reported[0, reported_reference], reported[1, reported_reference]),
            "reported": _metrics(reported[0], reported[1]),
            "validation_target": _metrics(outputs[0, target], outputs[index, target]),
            "validation_reference": _metrics(outputs[0, reference], outputs[index, reference]),
            "validation": _metrics(outputs[0], outputs[index]),
        },
        "predicted_vs_realised": {
            "correlation": _finite(np.corrcoef(predicted, realised)[0, 1]) if k else None,
            "realised_over_predicted": ratio,
            "examples": [{"id": i, "role": r, "predicted": float(p), "realised": float(q)}
                         for i, r, p, q in zip(run.example_ids, role, predicted, realised)],
        },
    }
    write_json(out_dir / REPORT, report)
    metric_vs_k(ks, {"target, predicted": predicted_curve["target"],
                     "target, realised (validation)": report["sweep"]["realised_mean_change"]["target"],
                     "reference, predicted": predicted_curve["reference"],
                     "reference, realised (validation)": report["sweep"]["realised_mean_change"]["reference"]},
                out_dir / PLOT, title=f"edit {spec.name}: {spec.direction} the target output", chosen_k=k,
                ylabel="mean output change")
    log.info("edit %s: k = %d (%s); target change predicted %.3f, realised on validation %.3f; reference accuracy "
             "loss %.3f; %s", spec.name, k, rule, checks["predicted_target_change"], checks["realised_target_change"],
             checks["reference_accuracy_loss"], "checks passed" if not problems else "CHECKS FAILED: " + "; ".join(problems))
    return report
