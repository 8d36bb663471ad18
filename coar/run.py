"""The run folder (results/<run>/): what the prepare step made, read once, and what every later
step, the command line and the Python API check against it.

A run folder holds the task as data (coar.saved_task), `components.json` and `prepare.json`
(task spec, sizes and fingerprints), then the files of the later steps at the paths named here.
Every row or attributions file must carry this run's sizes and fingerprints (`expect`) and say
how it was made (`PROVENANCE`), which each step compares with the values it is given; an
attributions file's component table and example ids must be this run's (`read_attributions`).
The task is always the config's: prepare.json's is only compared with it (`reopen`). Outside the
workflow (`coar show --verify`) the user names it, or prepare.json's is taken only when it is one
of the tasks shipped with coar (`named_task`).
"""

from __future__ import annotations

import json
import pkgutil
from functools import cached_property
from pathlib import Path

import coar.tasks
from coar.components import ComponentSet
from coar.constants import BASELINE_METHODS
from coar.h5format import AttributionsFile, FormatError, check_expected, read_attributions
from coar.saved_task import IDS, LoaderOptions, PreparedTask, example_ids, reopen

PREPARE = "prepare.json"
COMPONENTS = "components.json"
FINGERPRINTS = ("model_fingerprint", "components_fingerprint", "examples_fingerprint")
"""What ties a file to this run's model, component list and examples."""
PROVENANCE = ("alpha", "seed", "ablation", "output_fn", "precision")
"""How a row or attributions file's data were made; every step compares these with the config's."""
BASELINE_PROVENANCE = ("ablation", "output_fn")
"""The PROVENANCE keys a baseline's attributions depend on: they sample no masks (no alpha or
seed) and always run in fp32 (their file records precision fp32, whatever the config's)."""


SHIPPED_TASKS = frozenset(f"{module.name}:task" for module in pkgutil.walk_packages(coar.tasks.__path__, "coar.tasks.")
                          if not module.ispkg and module.name != "coar.tasks.params")
"""The task functions that come with coar: the only ones a command may reopen without being told."""


class Run:
    """One run folder. `Run(path)` reads prepare.json once; components and example ids are read
    (and checked against it) when first asked for."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        path = self.file(PREPARE)
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:  # not UTF-8 (e.g. pickle bytes), or not JSON
            raise ValueError(f"{path} cannot be read as JSON ({error}); it is not a file coar wrote: "
                             "delete the run folder's prepare.json and rerun the prepare step") from None
        if not isinstance(info, dict):
            raise ValueError(f"{path} is not a JSON object; delete it and rerun the prepare step")
        self.info: dict = info

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"

    @property
    def name(self) -> str:
        return self.dir.name

    def file(self, name: str) -> Path:
        """A file the prepare step made; refused, saying what to run, when it is missing."""
        path = self.dir / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run the prepare step first (coar prepare)")
        return path

    # Where the later steps write (the workflow's rules use the same names).
    @property
    def dataset(self) -> Path:
        return self.dir / "dataset.h5"

    @property
    def attributions(self) -> Path:
        return self.dir / "attributions.h5"

    @property
    def surrogate(self) -> Path:
        return self.dir / "surrogate.h5"

    @property
    def evaluation(self) -> Path:
        return self.dir / "evaluation.json"

    @property
    def comparison(self) -> Path:
        return self.dir / "comparison.json"

    def heldout(self, alpha: float | str) -> Path:
        return self.dir / "heldout" / f"alpha-{float(alpha):g}.h5"

    def baseline(self, method: str) -> Path:
        return self.dir / "baselines" / f"{method}.h5"

    @property
    def n_examples(self) -> int:
        return int(self.info["n_examples"])

    @property
    def n_components(self) -> int:
        return int(self.info["n_components"])

    @property
    def fingerprints(self) -> dict:
        """FINGERPRINTS as prepare recorded them."""
        return {k: self.info[k] for k in FINGERPRINTS}

    @property
    def expect(self) -> dict:
        """Attributes every row and attributions file of this run must carry (sizes and fingerprints)."""
        return {"n_components": self.n_components, "n_examples": self.n_examples, **self.fingerprints}

    def provenance(self, *, alpha: float | None = None, seed: int | None = None, ablation: str | None = None,
                   output_fn: str | None = None, precision: str | None = None) -> dict:
        """The PROVENANCE values a step's inputs must carry: those given (None = not checked), with
        output_fn defaulting, as in collect, to the task's own recorded by prepare."""
        values = {"alpha": alpha, "seed": seed, "ablation": ablation, "precision": precision,
                  "output_fn": output_fn or self.info["output_fn"]}
        return {k: v for k, v in values.items() if v is not None}

    @cached_property
    def components(self) -> ComponentSet:
        """The run's component list, checked against the fingerprint prepare recorded."""
        components = ComponentSet.load(self.file(COMPONENTS))
        if components.fingerprint != self.info["components_fingerprint"]:
            raise RuntimeError(f"{self.dir}: components.json changed after prepare: components fingerprint "
                               f"{components.fingerprint} but prepare.json records "
                               f"{self.info['components_fingerprint']}; rerun the prepare step")
        return components

    @cached_property
    def example_ids(self) -> list[str]:
        """The example ids prepare saved (n_examples unique strings)."""
        return example_ids(self.dir, self.n_examples)

    def read_attributions(self, path: str | Path, expected: dict) -> AttributionsFile:
        """An attributions file of this run, refused (FormatError naming the file, the key or
        field and both values) unless its fingerprints, its component table and example ids
        equal this run's (components.json, example_ids.json) and it was made as `expected`
        (provenance values; for a baseline's file only BASELINE_PROVENANCE applies)."""
        found = read_attributions(path, self.fingerprints)
        baseline = found.attrs["method"] in BASELINE_METHODS
        check_expected(path, found.attrs, {k: v for k, v in expected.items()
                                           if not baseline or k in BASELINE_PROVENANCE})
        for field, source, rows, wanted in (("components", COMPONENTS, found.components, self.components.table()),
                                            ("example_ids", IDS, found.example_ids, self.example_ids)):
            if rows != wanted:
                i = next((i for i, (a, b) in enumerate(zip(rows, wanted)) if a != b), min(len(rows), len(wanted)))
                have, want = (values[i] if i < len(values) else "nothing" for values in (rows, wanted))
                raise FormatError(f"{path}: {field} row {i} is {have!r} but this run's {source} has {want!r}; the file "
                                  "is corrupt or from another run: delete it and rerun the step that makes it")
        return found

    def check_task(self, spec: str, params: dict) -> None:
        """Refuse, naming both, when prepare.json names another task (spec or params) than the
        config's `spec` and `params`: a run folder never chooses the code a step runs."""
        recorded = (self.info.get("task"), _canonical(self.info.get("task_params")))
        if recorded != (spec, _canonical(params)):
            raise RuntimeError(
                f"{self.file(PREPARE)} names task {recorded[0]!r} with params {recorded[1]} but the config names "
                f"{spec!r} with params {_canonical(params)}; nothing was run. Rerun the prepare step for this "
                "config (delete the run folder), or set the config's task.spec and task.params to the run's")

    def named_task(self, spec: str | None, params: dict | None) -> tuple[str, dict]:
        """The task a command outside the workflow reopens: `spec` and `params` as the user names
        them (checked by `reopen`), or, when none is named, prepare.json's own only if it is a
        task shipped with coar (`coar.tasks.<module>:task`), so a results folder never chooses
        code of its own to run."""
        if spec is not None:
            return spec, {} if params is None else params
        recorded = self.info.get("task")
        if recorded not in SHIPPED_TASKS:
            raise RuntimeError(
                f"{self.file(PREPARE)} names task {recorded!r}, which is not one of the tasks shipped with coar; "
                "reopening the model runs that task's code, so name it yourself: --task SPEC --task-params JSON "
                "(the config's task.spec and task.params); nothing was run")
        return recorded, self.info.get("task_params") or {}

    def reopen(self, spec: str, params: dict, loader: LoaderOptions = LoaderOptions()) -> PreparedTask:
        """The prepared task (model with the saved weights, examples), checked against prepare.json.

        `spec` and `params` are the config's task: the task function called is the config's,
        never one named by prepare.json alone (see check_task)."""
        self.check_task(spec, params)
        return reopen(self.dir, {**self.info, "task": spec, "task_params": params}, loader)


def _canonical(params: object) -> str:
    """Task params as canonical JSON text, so equal dicts compare equal whatever their key order."""
    return json.dumps(params, sort_keys=True)
