"""A prepared task in its run folder, stored as data only: nothing read back is unpickled.

``save`` (the prepare step) writes

- ``weights.safetensors``: the model's state dict (a JSON header and raw tensor bytes);
- ``examples.safetensors``: ``inputs`` and ``labels`` of a tensor task, ``reference_inputs``, and
  ``validation_inputs`` and ``validation_labels`` when the task gives validation examples;
- ``example_ids.json``;
- ``groups.json``: the task's named groups of examples and of validation examples;

and returns the fingerprints that prepare.json records. ``reopen`` (every later step) calls the
task function named in prepare.json again, with :func:`coar.task.restoring` true so it can skip
training, loads the saved weights strictly into the model it returns, and refuses, naming both
values, weights or arrays whose fingerprints differ from prepare.json before any work. A
Dataset's examples are not copied: they are re-read from the task and their fingerprint is
checked on the first pass (coar.examples.FingerprintChecked). See docs/tasks.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from coar.atomic import atomic_path, write_json
from coar.examples import Examples, FingerprintChecked, TensorExamples
from coar.fingerprint import ExamplesHasher, model_fingerprint, tensors_fingerprint
from coar.task import Task, load_task

WEIGHTS = "weights.safetensors"
ARRAYS = "examples.safetensors"
IDS = "example_ids.json"
GROUPS = "groups.json"
FILES = (WEIGHTS, ARRAYS, IDS, GROUPS)
HASH_BATCH = 256  # examples per batch while prepare hashes a Dataset


@dataclass(frozen=True)
class LoaderOptions:
    """How a Dataset's examples are read: DataLoader workers, pinned memory, in-memory cache (MiB).

    The defaults are config `loader`'s; steps pin memory only when the device is a GPU.
    """

    workers: int = 0
    pin_memory: bool = True
    cache_mb: float = 0.0

    def source(self, task: Task) -> Examples:
        """The task's examples as batches read with these options."""
        return task.example_source(workers=self.workers, pin_memory=self.pin_memory,
                                   cache_bytes=int(self.cache_mb * 2**20))


@dataclass
class PreparedTask:
    """A task reopened from its run folder: weights loaded and checked, examples checked (or to be)."""

    model: nn.Module
    examples: Examples
    reference_inputs: torch.Tensor | None
    output_fn: str
    validation: tuple[torch.Tensor, torch.Tensor] | None = None
    groups: dict[str, list[int]] = field(default_factory=dict)
    validation_groups: dict[str, list[int]] = field(default_factory=dict)


def _reference_fingerprint(reference: torch.Tensor | None) -> str | None:
    return None if reference is None else tensors_fingerprint(reference)


def _validation_fingerprint(validation: tuple[torch.Tensor, torch.Tensor] | None) -> str | None:
    return None if validation is None else tensors_fingerprint(*validation)


def _groups_fingerprint(groups: dict) -> str:
    return hashlib.sha256(json.dumps(groups, sort_keys=True).encode()).hexdigest()


def save(task: Task, run_dir: str | Path, loader: LoaderOptions = LoaderOptions()) -> dict:
    """Write the task's weights, arrays and ids into `run_dir`; return what prepare.json records."""
    run_dir = Path(run_dir)
    hasher = ExamplesHasher()
    for x, y in loader.source(task).batches(HASH_BATCH):
        hasher.update(x, y)
    arrays = {} if task.examples is not None else {"inputs": task.inputs, "labels": task.labels}
    if task.reference_inputs is not None:
        arrays["reference_inputs"] = task.reference_inputs
    validation = None
    if task.validation_inputs is not None:
        validation = (task.validation_inputs, task.validation_labels)
        arrays["validation_inputs"], arrays["validation_labels"] = validation
    groups = {"examples": task.groups, "validation": task.validation_groups}
    with atomic_path(run_dir / WEIGHTS) as tmp:
        save_model(task.model, str(tmp), force_contiguous=True)
    with atomic_path(run_dir / ARRAYS) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in arrays.items()}, str(tmp))
    write_json(run_dir / IDS, task.example_ids)
    write_json(run_dir / GROUPS, groups)
    return {
        "examples_kind": "tensors" if task.examples is None else "dataset",
        "model_fingerprint": model_fingerprint(task.model),
        "examples_fingerprint": hasher.hexdigest(),
        "reference_fingerprint": _reference_fingerprint(task.reference_inputs),
        "n_validation": task.n_validation,
        "validation_fingerprint": _validation_fingerprint(validation),
        "groups_fingerprint": _groups_fingerprint(groups),
    }


def _file(run_dir: Path, name: str) -> Path:
    path = run_dir / name
    if not path.exists():
        old = " (task.pt of an older coar is no longer read: it could run code)" if (run_dir / "task.pt").exists() else ""
        raise FileNotFoundError(f"{path} is missing{old}: run the prepare step first (coar prepare)")
    return path


def _refuse(run_dir: Path, what: str, key: str, found: str | None, recorded: str | None) -> None:
    if found != recorded:
        raise RuntimeError(f"{run_dir}: {what} changed after prepare: {key} {found} but prepare.json records "
                           f"{recorded}; rerun the prepare step")


def _unreadable(path: Path, what: str, error: Exception) -> ValueError:
    return ValueError(f"{path} is not a readable safetensors file of {what} ({error}); rerun the prepare step "
                      "(or restore the file)")


def _load_arrays(run_dir: Path) -> dict[str, torch.Tensor]:
    path = _file(run_dir, ARRAYS)
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise _unreadable(path, "examples", error) from None


def open_arrays(run_dir: str | Path, framework: str = "np"):
    """examples.safetensors opened lazily (safetensors' safe_open, a context manager) for readers
    that take a slice at a time, such as the explorer; a file that is not one is refused naming it,
    as `reopen` refuses it. Its header is checked here, so slices read later fit the file."""
    path = _file(Path(run_dir), ARRAYS)
    try:
        return safe_open(str(path), framework)
    except (SafetensorError, OSError, ValueError) as error:
        raise _unreadable(path, "examples", error) from None


def _weights_file(run_dir: Path) -> Path:
    """The weights file, once its header has been read as safetensors (never as a pickle)."""
    path = _file(run_dir, WEIGHTS)
    try:
        with safe_open(path, "pt"):
            pass
    except (SafetensorError, OSError, ValueError) as error:
        raise _unreadable(path, "weights", error) from None
    return path


def reopen(run_dir: str | Path, info: dict, loader: LoaderOptions = LoaderOptions()) -> PreparedTask:
    """Rebuild the task recorded in `info` (prepare.json) and check it against the run folder's files."""
    run_dir = Path(run_dir)
    weights, arrays = _weights_file(run_dir), _load_arrays(run_dir)  # unreadable files refused before any task code
    task = load_task(info["task"], info["task_params"], restore=True)
    try:
        load_model(task.model, str(weights), strict=True)
    except (SafetensorError, OSError, ValueError) as error:
        raise _unreadable(weights, "weights", error) from None
    except RuntimeError as error:
        raise RuntimeError(f"{weights} does not fit the model of task {info['task']!r}: {error}") from None
    task.model.eval()
    _refuse(run_dir, WEIGHTS, "model fingerprint", model_fingerprint(task.model), info["model_fingerprint"])
    reference = arrays.get("reference_inputs")
    _refuse(run_dir, ARRAYS, "reference inputs fingerprint", _reference_fingerprint(reference),
            info["reference_fingerprint"])
    validation = None
    if "validation_inputs" in arrays:
        validation = (arrays.pop("validation_inputs"), arrays.pop("validation_labels"))
    _refuse(run_dir, ARRAYS, "validation examples fingerprint", _validation_fingerprint(validation),
            info.get("validation_fingerprint"))
    groups = _load_groups(run_dir, info.get("groups_fingerprint"))
    kind = "tensors" if task.examples is None else "dataset"
    if kind != info["examples_kind"] or task.n_examples != info["n_examples"]:
        raise RuntimeError(f"{run_dir}: task {info['task']!r} now gives {task.n_examples} examples as {kind}, "
                           f"prepare recorded {info['n_examples']} as {info['examples_kind']}; rerun the prepare step")
    if kind == "tensors":
        if set(arrays) - {"reference_inputs"} != {"inputs", "labels"}:
            raise ValueError(f"{run_dir / ARRAYS} lacks the inputs and labels of a tensor task; rerun the prepare step")
        hasher = ExamplesHasher()
        hasher.update(arrays["inputs"], arrays["labels"])
        _refuse(run_dir, ARRAYS, "examples fingerprint", hasher.hexdigest(), info["examples_fingerprint"])
        examples: Examples = TensorExamples(arrays["inputs"], arrays["labels"])
    else:
        examples = FingerprintChecked(loader.source(task), info["examples_fingerprint"], str(run_dir))
    return PreparedTask(task.model, examples, reference, info["output_fn"], validation, groups["examples"],
                        groups["validation"])


def _load_groups(run_dir: Path, recorded: str | None) -> dict:
    """groups.json checked against prepare.json; a run prepared before groups existed has none."""
    path = run_dir / GROUPS
    if recorded is None and not path.exists():
        return {"examples": {}, "validation": {}}
    path = _file(run_dir, GROUPS)
    try:
        groups = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path} is not a JSON object of groups ({error}); rerun the prepare step") from None
    _refuse(run_dir, GROUPS, "groups fingerprint", _groups_fingerprint(groups), recorded)
    return groups


def example_ids(run_dir: str | Path, n_examples: int) -> list[str]:
    """The example ids prepare saved (n_examples unique strings)."""
    path = _file(Path(run_dir), IDS)
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # not UTF-8, or not JSON
        raise ValueError(f"{path} is not a JSON list of example ids ({error}); rerun the prepare step") from None
    if not isinstance(ids, list) or len(ids) != n_examples or len(set(map(str, ids))) != n_examples:
        raise ValueError(f"{path} must hold {n_examples} unique example ids; rerun the prepare step")
    return [str(i) for i in ids]
