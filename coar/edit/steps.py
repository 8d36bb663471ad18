"""The two editing steps of the workflow, over a run's own files (docs/user-guide.md "Editing").

`plan` reads the run's attributions of the target and reference examples, ranks every component
the edit may touch (Welch t, coar.edit.planning) and writes `plan.json`: the ranking and the
attributions' predicted mean change of the target and reference outputs along it. `apply` walks
the ranking on the task's validation examples (coar.edit.selection: each candidate verified
before it joins, or the published prefix), picks k, checks the realised effect against the
tolerance and the prediction, and writes the edited weights, `ablated.json`, a plot and last
`report.json`, which records the SHA-256 of the others (coar.edit.record). A per-example edit
(`per_example: true`) edits each target example on its own and reports them together.
Neither step collects attributions again.
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from coar.atomic import write_json
from coar.components import ComponentSet
from coar.constants import DEFAULT_MASKS_PER_PASS, DEFAULT_MAX_BATCH
from coar.edit.plots import metric_vs_k, outputs_before_after
from coar.edit.planning import apply_edit, by_layer, choose_k, describe, rank, welch_scores
from coar.digest import file_digest
from coar.edit.record import ABLATED, PLAN, PLAN_FORMAT, PLOT, REPORT, REPORT_FORMAT, WEIGHTS, read_json_file
from coar.edit.selection import Path as EditPath, Predictions, accuracy, prefix_masks, prefix_path, success, verified_path
from coar.edit.selectors import Pool, needs_outputs, select, select_reference, validation_ids
from coar.edit.spec import AUTO, EditConfigError, EditSpec
from coar.examples import Examples, TensorExamples
from coar.forward import run_masked
from coar.h5format import AttributionsFile, FormatError, read_surrogate
from coar.outputs import resolve_output_fn
from coar.run import PROVENANCE, Run
from coar.saved_task import PreparedTask
from coar.steps import resolve_device

log = logging.getLogger(__name__)

RANKING = {"raise": "fix", "lower": "forget"}  # coar.edit.planning.rank's names: highest or lowest score first
SIGN = {"raise": 1.0, "lower": -1.0}  # a target example succeeds when sign * output > 0
RANKED_VERIFIED = 256  # the verified selection may try this many candidates beyond k_max (plan.json lists them)


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
        pool.outputs = _unedited(prepared, run.components, prepared.examples, output_fn, attr.attrs["ablation"], max_batch)
    target, reference = select(spec, pool)
    scores = welch_scores(attr.weight[target], attr.weight[reference])
    candidates = np.flatnonzero(allowed)
    order = candidates[rank(scores[candidates], RANKING[spec.direction])]
    predicted = predicted_changes(attr.weight, order, ks)
    ranked = ks[-1] if spec.selection == "prefix" or spec.per_example else ks[-1] + RANKED_VERIFIED
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
        "ranked": describe(run.components, order[:ranked], scores),
        "predicted_mean_change": {"target": predicted[target].mean(0).tolist(),
                                  "reference": predicted[reference].mean(0).tolist()},
    }
    write_json(out, result)
    log.info("edit %s: %d target and %d reference examples, %d candidate components; predicted target change "
             "of the first %d: %.3f", spec.name, len(target), len(reference), len(candidates), ks[-1],
             result["predicted_mean_change"]["target"][-1])
    return result


def read_plan(spec: EditSpec, run: Run, path: str | Path) -> dict:
    """plan.json of this edit and this run; refused, saying to rerun the plan, otherwise."""
    result = read_json_file(path, f"an edit plan ({PLAN_FORMAT})", "rerun edit_plan")
    if result.get("format") != PLAN_FORMAT:
        raise FormatError(f"edit {spec.name!r}: {path} is not a {PLAN_FORMAT} file; rerun edit_plan")
    stale = [k for k, v in {"edit": spec.as_dict(), **run.fingerprints}.items() if result.get(k) != v]
    if stale:
        raise FormatError(f"edit {spec.name!r}: {path} was planned for another {' and '.join(stale)} than this "
                          f"edit of run {run.name!r}; rerun edit_plan")
    return result


def _unedited(prepared: PreparedTask, components: ComponentSet, examples: Examples, output_fn: str, mode: str,
              max_batch: int) -> np.ndarray:
    """The unedited model's outputs on `examples` (one pass)."""
    return _outputs(prepared, components, np.zeros((1, len(components)), bool), examples, output_fn, mode, 1,
                    max_batch)[0]


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


class _Context:
    """What apply reads once: the run, its plan and attributions, the reopened task, and how its passes run."""

    def __init__(self, run_dir: str | Path, spec: EditSpec, plan_path: str | Path, attributions: str | Path,
                 task: tuple[str, dict], expected: dict | None, device: str, masks_per_pass: int, max_batch: int,
                 surrogate: str | Path | None = None) -> None:
        self.spec, self.run = spec, Run(run_dir)
        self.planned = read_plan(spec, self.run, plan_path)
        self.attr = read_run_attributions(spec, self.run, attributions, expected)
        self.weight = np.asarray(self.attr.weight, np.float64)
        self.surrogate = None if surrogate is None else read_surrogate(
            surrogate, {**self.run.expect, **{k: self.attr.attrs[k] for k in PROVENANCE},
                        "n_masks": self.attr.attrs["n_masks"]}).model()
        self.ablation = self.attr.attrs["ablation"]  # the ablation the attributions predict, and the edit makes permanent
        self.prepared = _reopen(self.run, task, device)
        if self.prepared.validation is None:
            raise EditConfigError(f"edit {spec.name!r}: task {self.run.info['task']!r} gives no validation examples "
                                  "(coar.task.Task validation_inputs, validation_labels); k is chosen and checked on them")
        self.components, self.output_fn = self.run.components, self.planned["output_fn"]
        self.masks_per_pass, self.max_batch = masks_per_pass, max_batch
        self.order = np.asarray([r["index"] for r in self.planned["ranked"]], dtype=np.int64)
        self.sign = SIGN[spec.direction]
        position = {example: i for i, example in enumerate(self.run.example_ids)}
        self.target = np.asarray([position[i] for i in self.planned["target"]["ids"]], dtype=np.int64)
        self.reference = np.asarray([position[i] for i in self.planned["reference"]["ids"]], dtype=np.int64)
        inputs, labels = self.prepared.validation
        self.validation = TensorExamples(inputs, labels)
        self.pool = Pool("the validation examples", validation_ids(len(labels)), labels.numpy(),
                         self.prepared.validation_groups)
        self.base = self.outputs(np.zeros((1, len(self.components)), bool), self.prepared.examples)[0]

    def outputs(self, masks: np.ndarray, examples: Examples) -> np.ndarray:
        """Outputs of the ablated model (masks x examples): one `run_masked` call."""
        return _outputs(self.prepared, self.components, masks, examples, self.output_fn, self.ablation,
                        self.masks_per_pass, self.max_batch)

    def path(self, order: np.ndarray, examples: Examples, target: np.ndarray, reference: np.ndarray,
             predictions: Predictions, goal: float | None) -> EditPath:
        """The spec's selection along `order`, verified on `examples` (coar.edit.selection)."""
        evaluate = lambda masks: self.outputs(masks, examples)  # noqa: E731
        k = self.spec.k if self.spec.k != AUTO else self.spec.k_max
        if self.spec.selection == "prefix":
            return prefix_path(order, min(k, len(order)), len(self.components), evaluate)
        return verified_path(order, len(self.components), evaluate, target=target, reference=reference, sign=self.sign,
                             tolerance=self.spec.tolerance, k_max=k, goal=goal, predictions=predictions,
                             batch=self.masks_per_pass)

    def choose(self, path: EditPath, target: np.ndarray, reference: np.ndarray, goal: float | None) -> tuple[int, str]:
        """The chosen k along `path` and the rule that chose it."""
        if self.spec.k != AUTO:
            k = len(path.order)
            return k, "k given in the config" if k == self.spec.k else \
                f"k given in the config ({self.spec.k}); only {k} candidates kept the tolerance"
        choice = choose_k(path.ks, success(path.outputs[:, target], self.sign),
                          accuracy(path.outputs[:, reference]), tolerance=self.spec.tolerance, goal=goal)
        return choice.k, choice.rule

    def tried(self, path: EditPath) -> list[dict] | None:
        """Every candidate the verified selection looked at (None for the prefix)."""
        if self.spec.selection == "prefix":
            return None
        return [{**row, "accepted": t.accepted, "reason": t.reason}
                for row, t in zip(describe(self.components, [t.index for t in path.tried]), path.tried)]


def apply(run_dir: str | Path, spec: EditSpec, plan_path: str | Path, attributions: str | Path, out_dir: str | Path,
          *, task: tuple[str, dict], expected: dict | None = None, device: str = "cpu", masks_per_pass: int = DEFAULT_MASKS_PER_PASS,
          max_batch: int = DEFAULT_MAX_BATCH, surrogate: str | Path | None = None) -> dict:
    """Choose the set on validation, check it, write the edited model and its report (module doc).
    With the run's `surrogate` (surrogate.h5), its predictions judge the candidates and the
    checks, the linear ones reported beside them."""
    context = _Context(run_dir, spec, plan_path, attributions, task, expected, device, masks_per_pass, max_batch,
                       surrogate)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.per_example:
        return _apply_each(context, out_dir)
    pool, components = context.pool, context.components
    if needs_outputs(spec):
        pool.outputs = context.outputs(np.zeros((1, len(components)), bool), context.validation)[0]
    target, reference = select(spec, pool)  # refuse an empty or overlapping selection before the selection's passes
    predictions = Predictions(context.weight, context.base, context.target, context.reference, context.surrogate)
    path = context.path(context.order, context.validation, target, reference, predictions, spec.goal)
    k, rule = context.choose(path, target, reference, spec.goal)
    ks, outputs = path.ks, path.outputs
    change = outputs - outputs[0]
    target_success, reference_accuracy = success(outputs[:, target], context.sign), accuracy(outputs[:, reference])
    predicted_curve = predicted_changes(context.weight, np.asarray(path.order, np.int64), ks)
    predicted_mean = {"target": predicted_curve[context.target].mean(0).tolist(),
                      "reference": predicted_curve[context.reference].mean(0).tolist()}
    surrogate_curve = None if context.surrogate is None else \
        predictions.change(prefix_masks(path.order, ks, len(components))).T  # examples x ks, as predicted_curve
    surrogate_mean = None if surrogate_curve is None else {
        "target": surrogate_curve[context.target].mean(0).tolist(),
        "reference": surrogate_curve[context.reference].mean(0).tolist()}
    judged = predicted_mean if surrogate_mean is None else surrogate_mean  # what predicts the set: checked below
    checks, problems = _checks(spec, float(reference_accuracy[0] - reference_accuracy[k]),
                               float(judged["target"][k]), float(change[k, target].mean()), k)
    checks["predicted_by"] = "linear" if surrogate_mean is None else "surrogate"
    if surrogate_mean is not None:
        checks["linear_predicted_target_change"] = float(predicted_mean["target"][k])
    for problem in problems:
        log.warning("edit %s: %s", spec.name, problem)
    if problems and spec.strict:
        raise RuntimeError(f"edit {spec.name!r} (strict: true): {'; '.join(problems)}; the edited model was not written")

    ablated = path.order[:k]
    mask = np.zeros((1, len(components)), bool)
    mask[0, ablated] = True
    after = context.outputs(mask, context.prepared.examples)[0]
    realised, predicted = after - context.base, context.weight[:, ablated].sum(1)
    by_surrogate = None if surrogate_curve is None else surrogate_curve[:, k]
    role = np.full(len(realised), "other", dtype=object)
    role[context.target], role[context.reference] = "target", "reference"
    edited = apply_edit(context.prepared.model, components, ablated, mode=context.ablation,
                        reference_inputs=context.prepared.reference_inputs)
    with torch.no_grad():
        save_file({name: t.detach().cpu().contiguous().clone() for name, t in edited.state_dict().items()},
                  str(out_dir / WEIGHTS))
    scores = {r["index"]: r["score"] for r in context.planned["ranked"]}
    write_json(out_dir / ABLATED, {**_ablated_header(context),
                                   "ablated": [{**r, "score": scores[r["index"]]} for r in describe(components, ablated)],
                                   "by_layer": by_layer(components, ablated)})
    metric_vs_k(ks, {"target, predicted": predicted_mean["target"],
                     "target, realised (validation)": change[:, target].mean(1).tolist(),
                     "reference, predicted": predicted_mean["reference"],
                     "reference, realised (validation)": change[:, reference].mean(1).tolist()},
                out_dir / PLOT, title=f"edit {spec.name}: {spec.direction} the target output ({spec.selection})",
                chosen_k=k, ylabel="mean output change")
    ratio = _ratios(realised, predicted, context, k)
    report = {
        **_report_header(context, k, rule, checks, problems),
        "sweep": {"ks": ks, "validation_target_success": target_success.tolist(),
                  "validation_reference_accuracy": reference_accuracy.tolist(),
                  "realised_mean_change": {"target": change[:, target].mean(1).tolist(),
                                           "reference": change[:, reference].mean(1).tolist()},
                  "predicted_mean_change": predicted_mean,
                  **({} if surrogate_mean is None else {"surrogate_predicted_mean_change": surrogate_mean})},
        "tried": context.tried(path),
        "metrics": {
            "target": _metrics(context.base[context.target], after[context.target]),
            "reference": _metrics(context.base[context.reference], after[context.reference]),
            "reported": _metrics(context.base, after),
            "validation_target": _metrics(outputs[0, target], outputs[k, target]),
            "validation_reference": _metrics(outputs[0, reference], outputs[k, reference]),
            "validation": _metrics(outputs[0], outputs[k]),
        },
        "predicted_vs_realised": {
            "correlation": _finite(np.corrcoef(predicted, realised)[0, 1]) if k else None,
            "realised_over_predicted": ratio,
            "accuracy": _accuracies(context, after, predicted, by_surrogate),
            **({} if by_surrogate is None else {
                "surrogate_correlation": _finite(np.corrcoef(by_surrogate, realised)[0, 1]) if k else None,
                "surrogate_realised_over_predicted": _ratios(realised, by_surrogate, context, k)}),
            "examples": [{"id": i, "role": r, "predicted": float(p), "realised": float(q),
                          **({} if by_surrogate is None else {"surrogate_predicted": float(by_surrogate[z])})}
                         for z, (i, r, p, q) in enumerate(zip(context.run.example_ids, role, predicted, realised))],
        },
    }
    _write_report(out_dir, report, (WEIGHTS, ABLATED, PLOT))
    log.info("edit %s: k = %d (%s, %s selection); target change predicted %.3f, realised on validation %.3f; "
             "reference accuracy loss %.3f; %s", spec.name, k, rule, spec.selection, checks["predicted_target_change"],
             checks["realised_target_change"], checks["reference_accuracy_loss"],
             "checks passed" if not problems else "CHECKS FAILED: " + "; ".join(problems))
    return report


def _apply_each(context: _Context, out_dir: Path) -> dict:
    """A per-example edit: each target example of the plan (a run example) gets its own set, ranked
    from its own attributions against the reference's, verified on it and on the validation
    reference, until it is moved (goal: the example itself) within the tolerance. One report of
    them all; no weights file (each edited model is the run's with that example's set ablated:
    ablated.json lists them, coar.edit.planning.apply_edit makes any of them)."""
    spec, components, run = context.spec, context.components, context.run
    if needs_outputs(spec):
        context.pool.outputs = context.outputs(np.zeros((1, len(components)), bool), context.validation)[0]
    reference = select_reference(spec, context.pool)
    candidates = np.flatnonzero(allowed_components(spec, components))
    inputs, labels = context.prepared.validation
    rows = _rows(context.prepared.examples, context.target)
    test_reference = TensorExamples(*_rows(context.prepared.examples, context.reference))
    test_base = context.base[context.reference]
    edits, ablated_sets = [], {}
    for position, row in enumerate(context.target):
        example_id = run.example_ids[row]
        examples = TensorExamples(torch.cat([rows[0][position : position + 1], inputs]),
                                  torch.cat([rows[1][position : position + 1], labels]))
        scores = welch_scores(context.weight[[row]], context.weight[context.reference])
        order = candidates[rank(scores[candidates], RANKING[spec.direction])]
        predictions = Predictions(context.weight, context.base, np.asarray([row]), context.reference, context.surrogate)
        path = context.path(order, examples, np.asarray([0]), reference + 1, predictions, spec.goal or 1.0)
        k, _ = context.choose(path, np.asarray([0]), reference + 1, spec.goal or 1.0)
        chosen = path.order[:k]
        mask = np.zeros((1, len(components)), bool)
        mask[0, chosen] = True
        test_after = context.outputs(mask, test_reference)[0] if k else test_base
        validation_accuracy = accuracy(path.outputs[[0, k]][:, reference + 1])
        edits.append({"id": example_id, "k": k, "fixed": bool(context.sign * path.outputs[k, 0] > 0),
                      "output": [float(path.outputs[0, 0]), float(path.outputs[k, 0])],
                      "reference_accuracy": validation_accuracy.tolist(),
                      "test_reference_accuracy": [float(accuracy(test_base)), float(accuracy(test_after))],
                      "predicted_change": float(context.weight[row, chosen].sum()),
                      **({} if context.surrogate is None else
                         {"surrogate_predicted_change": float(predictions.change(mask)[0, row])}),
                      "tried": len(path.tried)})
        ablated_sets[example_id] = describe(components, chosen)
        log.info("edit %s, example %s: k = %d, output %.3f -> %.3f, validation reference accuracy %.3f -> %.3f",
                 spec.name, example_id, k, *edits[-1]["output"], *validation_accuracy)
    fixed = sum(e["fixed"] for e in edits)
    losses = [e["reference_accuracy"][0] - e["reference_accuracy"][1] for e in edits]
    test_losses = [e["test_reference_accuracy"][0] - e["test_reference_accuracy"][1] for e in edits]
    summary = {"n": len(edits), "fixed": fixed, "fraction_fixed": fixed / len(edits),
               "median_reference_loss": float(np.median(losses)),
               "median_test_reference_loss": float(np.median(test_losses)), "examples": edits}
    checks = {"tolerance": spec.tolerance, "max_reference_loss": float(max(losses)),
              "passed": max(losses) <= spec.tolerance + 1e-12}
    problems = [] if checks["passed"] else [f"an example's edit loses {max(losses):.3f} reference accuracy on validation"]
    write_json(out_dir / ABLATED, {**_ablated_header(context), "per_example": ablated_sets})
    outputs_before_after(summary["examples"], out_dir / PLOT, title=f"edit {spec.name}: each target example on its own")
    report = {**_report_header(context, None, "each target example: the smallest k that moves it within the "
                                               "tolerance (k = 0: none did)", checks, problems),
              "sweep": None, "tried": None, "per_example": summary,
              "metrics": {"target": _metrics(np.asarray([e["output"][0] for e in edits]),
                                             np.asarray([e["output"][1] for e in edits]))}}
    _write_report(out_dir, report, (ABLATED, PLOT))
    log.info("edit %s: %d of %d target examples moved, each on its own; median validation reference accuracy loss "
             "%.4f (test: %.4f)", spec.name, fixed, len(edits), summary["median_reference_loss"],
             summary["median_test_reference_loss"])
    return report


def _ratios(realised: np.ndarray, predicted: np.ndarray, context: _Context, k: int) -> dict:
    """Realised over predicted mean change of the target's and the reference's attributed examples."""
    return {name: _finite(np.float64(_mean(realised[rows])) / _mean(predicted[rows])) if k else None
            for name, rows in (("target", context.target), ("reference", context.reference))}


def _accuracies(context: _Context, after: np.ndarray, predicted: np.ndarray, by_surrogate: np.ndarray | None) -> dict:
    """The target's and the reference's accuracy on the attributed examples before the edit,
    as the attributions (and the surrogate) predict it after, and as realised."""
    rows = {"target": context.target, "reference": context.reference}
    outputs = {"before": context.base, "predicted": context.base + predicted,
               **({} if by_surrogate is None else {"surrogate_predicted": context.base + by_surrogate}),
               "realised": after}
    return {name: {when: float(accuracy(values[index])) for when, values in outputs.items()}
            for name, index in rows.items()}


def _rows(examples: Examples, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs and labels of `rows` (positions, ascending) of a batch source, read once."""
    wanted, inputs, labels, start = set(rows.tolist()), [], [], 0
    for x, y in examples.batches(4096):
        keep = [i - start for i in range(start, start + len(x)) if i in wanted]
        if keep:
            inputs.append(x[keep])
            labels.append(y[keep])
        start += len(x)
    return torch.cat(inputs), torch.cat(labels)


def _ablated_header(context: _Context) -> dict:
    return {"edit": context.spec.name, "mode": context.ablation, "n_components": len(context.components),
            "components_fingerprint": context.components.fingerprint}


def _report_header(context: _Context, k: int | None, rule: str, checks: dict, problems: list[str]) -> dict:
    return {"format": REPORT_FORMAT, "edit": context.spec.as_dict(), "run": context.run.name,
            **context.run.fingerprints, "selection": context.spec.selection, "k": k, "rule": rule,
            "checks": checks, "problems": problems}


def _write_report(out_dir: Path, report: dict, files: tuple[str, ...]) -> None:
    """report.json, written last, with the SHA-256 of each of the edit's other `files` (coar.edit.record)."""
    report["files"] = {name: file_digest(out_dir / name) for name in files}
    write_json(out_dir / REPORT, report)
