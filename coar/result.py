"""`coar.Attributions`: the one result object of an attribution, whoever made it.

`coar.attribute(...)` (coar.api) returns one from a single process; `coar.open(run_dir)` reads one
from a workflow run's folder, checked as every step checks its inputs (coar.run.Run and the
run's fingerprints). The command line's `show` and `export`, the explorer and the edits read
results through it, so a component's name, a table's columns and the held-out scoring are
defined once, here.

    weight[z, i]  predicted change of example z's output when component i is ablated
    bias[z]       predicted output of example z with nothing ablated

Tables (`components`, `top`, `moved_most`) are lists of named rows (`Table`): they print aligned,
and `pandas.DataFrame(table)` or `table.to_pandas()` makes a data frame. Only numpy is needed to
read a result; torch is imported by `ablate` alone.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np

from coar.attributions import LinearModels
from coar.components import ComponentSet
from coar.rounds import RoundScore, read_score

if TYPE_CHECKING:
    from torch import nn

FORMS = ("long", "wide")
"""Forms of `Attributions.to_pandas`: one row per (example, component), or one row per example."""


class Component(NamedTuple):
    """One column of the attributions: its name, the module (layer) it lives on, its unit there,
    its kind and the layer's position among the component layers (0 = nearest the input)."""

    name: str
    module: str
    unit: int
    kind: str
    layer: int


class Effect(NamedTuple):
    """Predicted change of one example's output when one component is ablated."""

    example: str
    component: str
    module: str
    layer: int
    unit: int
    kind: str
    predicted: float


class Table(list):
    """Rows of one NamedTuple type, printed as an aligned text table."""

    def __str__(self) -> str:
        if not self:
            return "(no rows)"
        fields = type(self[0])._fields
        cells = [list(fields)] + [[f"{v:+.4g}" if isinstance(v, float) else str(v) for v in row] for row in self]
        widths = [max(len(c[j]) for c in cells) for j in range(len(fields))]
        return "\n".join("  ".join(c.rjust(w) if i and _numeric(c) else c.ljust(w)
                                   for c, w in zip(line, widths)).rstrip()
                         for i, line in enumerate(cells))

    def to_pandas(self) -> Any:
        """The rows as a pandas DataFrame (pandas must be installed)."""
        pd = _pandas()
        return pd.DataFrame(list(self), columns=type(self[0])._fields if self else None)


@dataclass(frozen=True)
class Attributions(LinearModels):
    """Per-example linear models of the ablated output over named components (weight (n, N) and
    bias (n,), float32; 1 = ablated), with the examples' ids and how they were made (`info`)."""

    component_set: ComponentSet = field(repr=False)
    example_ids: tuple[str, ...] = field(repr=False)
    info: dict = field(repr=False, default_factory=dict)
    surrogate: Any = field(repr=False, compare=False, default=None)
    """A surrogate beyond linear COAR fitted on the same masks (coar.solver.surrogate.ProjectedQuadratic:
    `surrogate.predict(masks)`), or None: `coar.attribute(..., surrogate=...)`, or a run's
    surrogate.h5 (config `surrogate`) through `coar.open`."""

    def __post_init__(self) -> None:
        n, n_components = self.weight.shape
        if self.bias.shape != (n,) or len(self.example_ids) != n or len(self.component_set) != n_components:
            raise ValueError(f"weight {self.weight.shape}, bias {self.bias.shape}, {len(self.example_ids)} example ids "
                             f"and {len(self.component_set)} components do not agree")
        object.__setattr__(self, "example_ids", tuple(str(i) for i in self.example_ids))

    def __repr__(self) -> str:
        return (f"Attributions({len(self.example_ids)} examples x {len(self.component_set)} components, "
                f"method={self.info.get('method')!r}, masks={self.info.get('n_masks')!r})")

    # ------------------------------------------------------------------ names
    @cached_property
    def components(self) -> Table:
        """One `Component` row per column of `weight` (names and layers: ComponentSet.names, .layers)."""
        return Table(Component(name, m, u, k, layer) for name, (m, u, k), layer
                     in zip(self._names, self.component_set.table(), self.component_set.layers()))

    @cached_property
    def _names(self) -> list[str]:
        return self.component_set.names()

    def example_index(self, example: int | str) -> int:
        """Row of `example`, given by id (a string) or by position (an int)."""
        return _lookup(example, list(self.example_ids), "example")

    def component_index(self, component: int | str) -> int:
        """Column of `component`, given by name ("module[unit]") or by position (an int)."""
        return _lookup(component, self._names, "component")

    # ------------------------------------------------------------------ reading
    def top(self, example: int | str, k: int = 10) -> Table:
        """The k components with the largest predicted effects on `example` (by magnitude, signed)."""
        z = self.example_index(example)
        row = self.weight[z]
        order = np.argsort(-np.abs(row), kind="stable")[: max(0, int(k))]
        components = self.components
        return Table(Effect(self.example_ids[z], c.name, c.module, c.layer, c.unit, c.kind, float(row[i]))
                     for i in order for c in (components[i],))

    def effects(self, component: int | str) -> np.ndarray:
        """Predicted effect of ablating `component` on every example (n,), in example order."""
        return self.weight[:, self.component_index(component)].copy()

    def moved_most(self, component: int | str, k: int = 10) -> tuple[Table, Table]:
        """The k examples `component` raises most and the k it lowers most (largest effects first)."""
        i = self.component_index(component)
        c, column = self.components[i], self.weight[:, i]
        order = np.argsort(-column, kind="stable")

        def rows(indices: np.ndarray, sign: float) -> Table:
            return Table(Effect(self.example_ids[z], c.name, c.module, c.layer, c.unit, c.kind, float(column[z]))
                         for z in indices if sign * column[z] > 0)

        return rows(order[:k], 1.0), rows(order[::-1][:k], -1.0)

    def evaluate(self, masks: np.ndarray, outputs: np.ndarray | None = None) -> dict:
        """How well the predictions track true outputs of ablated models (rows = masks, columns =
        examples), scored as the workflow's evaluate step does (coar.evaluate.score). Without
        `outputs`, they are made here: the run's model (`model()`) ablated by each mask, on the
        run's examples."""
        from coar.evaluate import predict, score

        masks = np.asarray(masks)
        if masks.ndim != 2 or masks.shape[1] != self.weight.shape[1]:
            raise ValueError(f"masks must be (rows, {self.weight.shape[1]} components), got {masks.shape}")
        outputs = self._realised(masks.astype(bool)) if outputs is None else np.asarray(outputs)
        return score(outputs, predict(self.weight, self.bias, masks), list(self.example_ids))

    def evaluate_surrogate(self, masks: np.ndarray, outputs: np.ndarray) -> dict:
        """`evaluate` for the surrogate (`surrogate`): its predictions scored against the true
        outputs of the masks as the workflow's evaluate step scores it."""
        from coar.evaluate import score

        if self.surrogate is None:
            raise ValueError("these attributions have no surrogate: coar.attribute(..., surrogate='projected_quadratic'), "
                             "or a run with config surrogate.kind set")
        masks = np.asarray(masks)
        if masks.ndim != 2 or masks.shape[1] != self.weight.shape[1]:
            raise ValueError(f"masks must be (rows, {self.weight.shape[1]} components), got {masks.shape}")
        return score(np.asarray(outputs), self.surrogate.predict(masks), list(self.example_ids))

    def to_pandas(self, form: str = "long") -> Any:
        """A pandas DataFrame: "long" has one row per (example, component) with the component's
        module, layer, unit and kind and the predicted change; "wide" one row per example (index: example ids): the bias,
        then one column per component name."""
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        pd = _pandas()
        if form == "wide":
            frame = pd.DataFrame(self.weight, index=pd.Index(self.example_ids, name="example"), columns=self._names)
            frame.insert(0, "bias", self.bias)
            return frame
        n, n_components = self.weight.shape
        components = self.components
        columns = {f: np.tile(np.asarray([getattr(c, f) for c in components]), n)
                   for f in ("name", "module", "layer", "unit", "kind")}
        return pd.DataFrame({"example": np.repeat(np.asarray(self.example_ids, dtype=object), n_components),
                             "component": columns.pop("name"), **columns, "predicted": self.weight.reshape(-1)})

    # ------------------------------------------------------------------ acting
    def model(self, task: str | None = None, task_params: dict | None = None) -> nn.Module:
        """The run's model: rebuilt by its task function with the run's weights (weights.safetensors),
        its fingerprint checked against the one prepare recorded (refused, naming both, when they
        differ). `task` and `task_params` name the task function (the config's task.spec and
        params); without them the run's own is used when it is a task shipped with coar, since
        rebuilding runs the task's code and a results folder never chooses code of its own."""
        return self._reopen(task, task_params).model

    def _reopen(self, task: str | None = None, task_params: dict | None = None) -> Any:
        from coar.run import Run

        run = Run(self._run_dir())
        return run.reopen(*run.named_task(task, task_params))

    def _realised(self, masks: np.ndarray) -> np.ndarray:
        """Outputs (masks x examples) of the run's model ablated by each mask, on the run's examples."""
        from coar.forward import run_masked
        from coar.outputs import resolve_output_fn

        prepared = self._reopen()
        return run_masked(prepared.model, self.component_set, masks, prepared.examples, None,
                          resolve_output_fn(self.info.get("output_fn") or prepared.output_fn),
                          mode=self.info.get("ablation", "weight"), reference_inputs=prepared.reference_inputs)

    def ablate(self, model: nn.Module | None, components: Sequence[int | str], mode: str | None = None,
               reference_inputs: Any = None) -> nn.Module:
        """A copy of `model` (None: the run's own, `model()`) with `components` (names or positions)
        ablated for good, as the published procedure does (coar.edit.planning.apply_edit); `mode`
        defaults to the ablation the attributions model."""
        from coar.edit.planning import apply_edit

        indices = [self.component_index(c) for c in components]
        return apply_edit(self.model() if model is None else model, self.component_set, indices,
                          mode or self.info.get("ablation", "weight"), reference_inputs=reference_inputs)

    @property
    def rounds(self) -> tuple[RoundScore, ...]:
        """A `masks: auto` result's rounds (coar.rounds.RoundScore: masks, mean held-out correlation
        with its interval, gain with its bound, and the decision); empty for a fixed mask count."""
        return tuple(RoundScore.from_json(r) for r in self.info.get("rounds", ()))

    # ------------------------------------------------------------------ edits
    def edits(self) -> list[str]:
        """Names of the run's applied edits (config `edits`: results/<run>/edits/<name>/report.json)."""
        from coar.edit.record import edit_folders

        return [folder.name for folder in edit_folders(self._run_dir())]

    def edit(self, name: str) -> dict:
        """The report of the run's edit `name` (report.json as a dict), every file it names checked
        against the SHA-256 it records (coar.edit.record.read_report); refused when one was altered."""
        from coar.edit.record import read_report
        from coar.run import FINGERPRINTS

        folder = self._run_dir() / "edits" / name
        if not (folder / "report.json").is_file():
            raise ValueError(f"run {self.info.get('run')!r} has no applied edit {name!r} ({folder}/report.json is "
                             f"missing); its edits: {self.edits() or 'none'} (snakemake ... edits makes them)")
        return read_report(folder, {k: self.info[k] for k in FINGERPRINTS})

    def _run_dir(self) -> Path:
        if "run_dir" not in self.info:
            raise ValueError("these attributions were not opened from a run folder (coar.open(run_dir)): they have no edits")
        return Path(self.info["run_dir"])


def open_run(run_dir: str | Path) -> Attributions:
    """The attributions of a workflow run's folder (results/<run>), checked against the run's
    prepare step: sizes, fingerprints, component names and example ids (Run.read_attributions).
    `info` holds how they were made and, once the run is evaluated, the held-out scores as
    `coar.attribute` gives them (`heldout`, `mean_heldout_correlation`, from evaluation.json,
    refused when it was made from other attributions); a `masks: auto` run's rounds are `rounds`.
    A run with a surrogate (config `surrogate`: surrogate.h5, refused unless made for this run from
    the same masks) has it as `surrogate`, and its held-out scores once evaluated as
    `coar.attribute` gives them (`heldout_surrogate`, `mean_heldout_correlation_surrogate`)."""
    from coar.edit.record import read_json_file
    from coar.h5format import check_expected, read_surrogate
    from coar.run import Run

    run = Run(run_dir)
    path = run.attributions
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the run has not been fitted yet (run the workflow, "
                                "or its fit step: coar fit)")
    found = run.read_attributions(path, {})
    info = {"run": run.name, "run_dir": str(run.dir), "task": run.info.get("task"),
            "task_params": run.info.get("task_params"), **found.attrs}
    if run.evaluation.exists():
        scores = read_json_file(run.evaluation, "the evaluate step's scores",
                                "rerun the workflow's evaluate step (snakemake ... evaluation.json)")
        check_expected(run.evaluation, scores, {k: found.attrs[k] for k in EVALUATED_FROM if k in found.attrs})
        info.update(heldout=scores, mean_heldout_correlation=scores["mean_correlation"])
    rounds = _run_rounds(run)
    if rounds:
        info["rounds"] = [r.to_json() for r in rounds]
    surrogate = None
    if run.surrogate.exists():
        made = {**run.expect, **{k: found.attrs[k] for k in EVALUATED_FROM if k not in ("method",)}}
        fitted = read_surrogate(run.surrogate, made)
        surrogate = fitted.model(threads=None)
        info["surrogate"] = {k: fitted.attrs[k] for k in ("kind", "rank", "penalty", "basis_method", "n_masks")}
        if "heldout" in info and "surrogate" in info["heldout"]:
            scored = info["heldout"]["surrogate"]
            check_expected(run.evaluation, scored, info["surrogate"])
            info.update(heldout_surrogate=scored["by_alpha"][f"{found.attrs['alpha']:g}"],
                        mean_heldout_correlation_surrogate=scored["mean_correlation"])
    return Attributions(found.weight, found.bias, run.components, found.example_ids, info, surrogate=surrogate)


EVALUATED_FROM = ("alpha", "seed", "ablation", "output_fn", "precision", "method", "n_masks")
"""What evaluation.json and the attributions it scored both record, and must agree on."""


def _run_rounds(run: Any) -> list[RoundScore]:
    """A masks: auto run's rounds in order, up to the one it stopped at, each checked (coar.rounds.read_score)."""
    rounds: list[RoundScore] = []
    while (path := run.dir / "rounds" / f"round-{len(rounds)}.json").exists():
        rounds.append(read_score(path, {"round": len(rounds), **run.expect}))
        if rounds[-1].stop:
            break
    return rounds


def _lookup(key: int | str, names: list[str], what: str) -> int:
    """Position of `key` (an int position, or one of `names`); an unknown name lists the closest."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if not -len(names) <= key < len(names):
            raise IndexError(f"{what} {key} out of range for {len(names)} {what}s")
        return int(key) % len(names)
    try:
        return names.index(str(key))
    except ValueError:
        close = difflib.get_close_matches(str(key), names, n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else f"; e.g. {', '.join(names[:3])}"
        raise ValueError(f"no {what} named {key!r} among {len(names)}{hint}") from None


def _numeric(text: str) -> bool:
    return re.fullmatch(r"[+-]?[0-9.]+(e[+-]?[0-9]+)?", text) is not None


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise ImportError("pandas is needed for tables as data frames: pip install pandas") from None
    return pandas
