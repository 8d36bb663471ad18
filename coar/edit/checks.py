"""What a run's edits need of its task, checked as soon as prepare has saved the run and before any
collection (the workflow's check_edits rule, `coar check-edits`): a mistake in an edit is refused
in seconds, not after the hours of collection and fit that the editing steps come after.

The config alone is checked at start-up (coar/edit/spec.py); here, with the prepared run:

- the task gives validation examples (k is chosen and checked on them);
- the edit's `components` patterns match some of the run's modules, and a given `k` is at most
  the components they match (coar.edit.steps.allowed_components, sweep_ks);
- an `ids` file names only the run's example ids and `validation:<i>` ids;
- a `label` is one that the examples have, a `group` one that the task gives;
- target and reference select non-empty, disjoint sets among the run's attributed examples (where
  the plan ranks the components) and among the validation examples (where apply chooses and
  checks k); a `per_example` edit, whose targets are the run's examples, needs only its reference
  among the validation examples.

`misclassified` looks at the unedited model's outputs: one forward pass over each set of
examples, with the run's output function, as the editing steps do. Every refusal names the edit
and the key (coar.edit.spec.EditConfigError). The editing steps still check all of this again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from coar.constants import DEFAULT_MAX_BATCH
from coar.edit.selectors import Pool, needs_outputs, select, select_reference, validation_ids
from coar.edit.spec import AUTO, EditConfigError, EditSpec
from coar.edit.steps import allowed_components, sweep_ks
from coar.examples import Examples, TensorExamples
from coar.forward import run_masked
from coar.outputs import resolve_output_fn
from coar.run import Run
from coar.steps import resolve_device

log = logging.getLogger(__name__)

SHOWN = 3
"""Unknown ids listed in a refusal."""


def stamped_edits(stamps: str | Path) -> list:
    """The edits of a run's config stamps folder (results/<run>/config): its one `edits-<digest>.json`,
    which the workflow writes when it reads the config (workflow/rules/common.smk)."""
    found = sorted(Path(stamps).glob("edits-*.json"))
    if len(found) != 1:
        raise FileNotFoundError(f"{stamps} holds {len(found)} edits stamp files (edits-<digest>.json), not one; "
                                "run the workflow again, which writes the current one")
    return json.loads(found[0].read_text(encoding="utf-8"))["edits"]


def check_edits_on_run(run_dir: str | Path, specs: list[EditSpec], task_spec: str, task_params: dict,
                       device: str = "cpu", *, output_fn: str | None = None,
                       max_batch: int = DEFAULT_MAX_BATCH) -> list[str]:
    """Refuse, naming the edit and the key, an edit of `specs` that the prepared run in `run_dir`
    cannot make (module doc); returns one line per edit saying what it selects."""
    if not specs:
        return []
    run = Run(run_dir)
    prepared = run.reopen(task_spec, task_params)
    if prepared.validation is None:
        raise EditConfigError(f"edit {specs[0].name!r}: task {task_spec!r} (config key 'task.spec') gives no "
                              "validation examples (coar.task.Task validation_inputs, validation_labels), on which "
                              "every edit's k is chosen and checked; give the task validation examples or remove "
                              "the config's edits")
    prepared.model.to(resolve_device(device))
    function = resolve_output_fn(output_fn or prepared.output_fn)
    examples = {"run": prepared.examples, "validation": TensorExamples(*prepared.validation)}

    def unedited(which: str) -> np.ndarray:
        """The unedited model's outputs (one zero mask: no component ablated, so any ablation mode)."""
        return run_masked(prepared.model, run.components, torch.zeros((1, len(run.components)), dtype=torch.bool),
                          examples[which], None, function, masks_per_pass=1, max_batch=max_batch, mode="weight",
                          reference_inputs=prepared.reference_inputs)[0]

    # The run's labels take one pass over its examples (a Dataset reads them all): only when a selector looks at them.
    uses_labels = any("label" in spec.target or "label" in spec.reference for spec in specs)
    labels = _labels(prepared.examples) if uses_labels else np.zeros(0)
    validation_labels = prepared.validation[1].cpu().numpy()
    pools = {"run": Pool("the run's examples", run.example_ids, labels, prepared.groups),
             "validation": Pool("the validation examples", validation_ids(len(validation_labels)), validation_labels,
                                prepared.validation_groups)}
    known_ids = set(pools["run"].ids) | set(pools["validation"].ids)
    lines = []
    for spec in specs:
        allowed = int(allowed_components(spec, run.components).sum())
        ks = sweep_ks(spec, allowed)
        for key in ("target", "reference"):
            if "ids" in getattr(spec, key):
                _check_ids(spec, key, known_ids)
        if needs_outputs(spec):
            for which, pool in pools.items():
                if pool.outputs is None:
                    pool.outputs = unedited(which)
        counts = {}
        for which, pool in pools.items():
            # a per-example edit's targets are the run's examples: on validation, its reference alone
            alone = spec.per_example and which == "validation"
            for key in ("reference",) if alone else ("target", "reference"):
                _check_label(spec, key, pool)
            counts[which] = (None, len(select_reference(spec, pool))) if alone else tuple(map(len, select(spec, pool)))
        k = spec.k if spec.k != AUTO else f"auto, up to {ks[-1]}"
        lines.append(f"edit {spec.name!r}: {_counted(counts['run'], pools['run'])}; "
                     f"{_counted(counts['validation'], pools['validation'])}; k {k} of the {allowed} components "
                     f"matching {spec.components}")
        log.info(lines[-1])
    return lines


def _labels(examples: Examples) -> np.ndarray:
    return np.concatenate([y.cpu().numpy() for _, y in examples.batches(4096)])


def _check_ids(spec: EditSpec, key: str, known: set[str]) -> None:
    """Every id of the selector's `ids` file must be one of the run's example ids or a `validation:<i>` id."""
    path = getattr(spec, key)["ids"]
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    unknown = [line for line in dict.fromkeys(lines) if line not in known]
    if unknown:
        raise EditConfigError(f"edit {spec.name!r}, key '{key}.ids': {path!r} names {len(unknown)} id(s) that are "
                              f"neither the run's example ids (example_ids.json) nor validation:<position> ids, e.g. "
                              f"{unknown[:SHOWN]}")


def _check_label(spec: EditSpec, key: str, pool: Pool) -> None:
    """A `label` selector's label must be one that some example of `pool` has."""
    label = getattr(spec, key).get("label")
    if label is None:
        return
    labels = pool.labels
    if labels.ndim != 1:
        return  # the selector refuses it, naming the labels' shape
    if not (labels == label).any():
        present = np.unique(labels).tolist()
        raise EditConfigError(f"edit {spec.name!r}, key '{key}.label': no example among {pool.what} "
                              f"({len(pool.ids)}) has label {label}; their labels are "
                              f"{present if len(present) <= 20 else f'{present[:20]} ... ({len(present)} in all)'}")


def _counted(counts: tuple[int | None, int | None], pool: Pool) -> str:
    """E.g. "18 target, 162 reference among the run's examples"."""
    selected = ", ".join(f"{n} {role}" for n, role in zip(counts, ("target", "reference")) if n is not None)
    return f"{selected} among {pool.what}"
