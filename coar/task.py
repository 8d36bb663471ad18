"""The task interface: a model, the examples to attribute, and how to score them.

A task is produced by a task function named by a spec, ``"package.module:function"`` or
``"package.module"`` (then the function ``task``), called with a dict of parameters. The
workflow's prepare step builds the task once and saves its weights and examples as data
(coar.saved_task); later steps call the task function again with :func:`restoring` true, so
it can skip training, and load the saved weights into the model it returns (docs/tasks.md).
"""

import contextvars
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from coar.constants import DEFAULT_TASK_FUNCTION
from coar.examples import DatasetExamples, Examples, TensorExamples
from coar.outputs import OutputFn, resolve_output_fn
from coar.spec import import_object

_RESTORING = contextvars.ContextVar("coar_restoring", default=False)


def restoring() -> bool:
    """True while coar rebuilds a prepared task from its run folder.

    The saved weights then replace the model's, so a task function may skip training (and
    anything else only ``prepare`` needs, such as accuracy in ``info``) and return the model
    freshly initialised. Its examples must still be the prepared ones (they are fingerprinted).
    """
    return _RESTORING.get()


@contextmanager
def _restoring_mode(on: bool) -> Iterator[None]:
    token = _RESTORING.set(on)
    try:
        yield
    finally:
        _RESTORING.reset(token)


@dataclass
class Task:
    """What COAR attributes: ``output_fn(model(inputs), labels)`` per example.

    The examples are either two tensors, ``inputs`` and ``labels``, or ``examples``: a map-style
    ``torch.utils.data.Dataset`` of (input, label) pairs (e.g. an ImageFolder), read in index
    order and streamed from disk. ``example_ids`` default to the positions "0", "1", ...
    Construction validates the fields and puts the model in eval mode (BatchNorm and dropout
    must not change behaviour between ablated forward passes).
    """

    model: torch.nn.Module
    inputs: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    output_fn: str = "margin"
    example_ids: list[str] | None = None
    reference_inputs: torch.Tensor | None = None
    info: dict = field(default_factory=dict)
    examples: Dataset | None = None
    groups: dict[str, list[int]] | list[str] | None = None
    validation_inputs: torch.Tensor | None = None
    validation_labels: torch.Tensor | None = None
    validation_groups: dict[str, list[int]] | list[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(self.model).__name__}")
        if self.examples is not None:
            if self.inputs is not None or self.labels is not None:
                raise TypeError("give the examples either as inputs and labels or as a Dataset `examples`, not both")
            if not isinstance(self.examples, Dataset) or not hasattr(self.examples, "__len__"):
                raise TypeError("examples must be a map-style torch.utils.data.Dataset with a length")
        else:
            for name in ("inputs", "labels"):
                value = getattr(self, name)
                if not isinstance(value, torch.Tensor) or value.dim() == 0:
                    raise TypeError(f"{name} must be a Tensor with a leading example dimension")
            if len(self.labels) != len(self.inputs):
                raise ValueError(f"inputs has {len(self.inputs)} examples but labels has {len(self.labels)}")
        n = self.n_examples
        if n < 1:
            raise ValueError("a task needs at least one example, inputs is empty")
        if self.example_ids is None:
            self.example_ids = [str(i) for i in range(n)]
        self.example_ids = [str(i) for i in self.example_ids]
        if len(self.example_ids) != n or len(set(self.example_ids)) != n:
            raise ValueError(f"example_ids must be {n} unique ids, one per example")
        if self.reference_inputs is not None and (
            not isinstance(self.reference_inputs, torch.Tensor) or len(self.reference_inputs) < 1
        ):
            raise TypeError("reference_inputs must be None or a non-empty Tensor")
        self.groups = normalise_groups(self.groups, n, "groups")
        self._check_validation()
        if not isinstance(self.output_fn, str):
            raise TypeError("output_fn must be a string (a registry name or 'package.module:function')")
        resolve_output_fn(self.output_fn)  # fail now on a typo, not after hours of ablations
        try:
            json.dumps(self.info)
        except TypeError as error:
            raise TypeError(f"task info must be JSON-serialisable: {error}") from None
        self.model.eval()

    def _check_validation(self) -> None:
        x, y = self.validation_inputs, self.validation_labels
        if x is None and y is None:
            if self.validation_groups is not None:
                raise ValueError("validation_groups needs validation_inputs and validation_labels")
            self.validation_groups = {}
            return
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.dim() == 0 or y.dim() == 0:
            raise TypeError("validation_inputs and validation_labels must both be Tensors with a leading example dimension")
        if len(x) != len(y) or len(x) < 1:
            raise ValueError(f"validation_inputs has {len(x)} examples but validation_labels has {len(y)}; "
                             "give the same number, at least one")
        self.validation_groups = normalise_groups(self.validation_groups, len(x), "validation_groups")

    @property
    def n_validation(self) -> int:
        """Number of validation examples (0 when the task gives none)."""
        return 0 if self.validation_inputs is None else len(self.validation_inputs)

    @property
    def n_examples(self) -> int:
        """Number of examples to attribute."""
        return len(self.inputs) if self.examples is None else len(self.examples)

    def example_source(self, *, workers: int = 0, pin_memory: bool = False, cache_bytes: int = 0) -> Examples:
        """The examples as batches (coar.examples); the loader options apply to a Dataset only."""
        if self.examples is None:
            return TensorExamples(self.inputs, self.labels)
        return DatasetExamples(self.examples, workers=workers, pin_memory=pin_memory, cache_bytes=cache_bytes)

    @property
    def output(self) -> OutputFn:
        """The output function named by ``output_fn``, as a callable."""
        return resolve_output_fn(self.output_fn)


def normalise_groups(groups: dict | list | None, n: int, what: str) -> dict[str, list[int]]:
    """{name: sorted unique positions < n} from a name per example, or a map name -> positions; refused otherwise."""
    if groups is None:
        return {}
    if isinstance(groups, (list, tuple)):
        if len(groups) != n:
            raise ValueError(f"{what}: a name per example needs {n} names, got {len(groups)}")
        named: dict[str, list[int]] = {}
        for position, name in enumerate(groups):
            named.setdefault(str(name), []).append(position)
        return named
    if not isinstance(groups, dict):
        raise TypeError(f"{what} must be a list of names (one per example) or a dict name -> positions")
    normalised = {}
    for name, positions in groups.items():
        rows = sorted({int(i) for i in positions})
        if not rows or rows[0] < 0 or rows[-1] >= n:
            raise ValueError(f"{what}[{name!r}] must list positions 0..{n - 1} of the examples, at least one")
        normalised[str(name)] = rows
    return normalised


def load_task(spec: str, params: dict | None = None, *, restore: bool = False) -> Task:
    """Build the task named by ``spec`` by calling its task function with ``params`` (default {}).

    With ``restore``, :func:`restoring` is true during the call (see coar.saved_task).
    """
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise TypeError(f"task {spec!r}: params must be a dict, got {type(params).__name__}")
    function = import_object(spec, default_attr=DEFAULT_TASK_FUNCTION, kind="task")
    try:
        with _restoring_mode(restore):
            task = function(dict(params))
    except Exception as error:
        raise RuntimeError(f"task function {spec!r} raised {type(error).__name__}: {error}") from error
    if not isinstance(task, Task):
        raise TypeError(f"task function {spec!r} returned {type(task).__name__}, not a coar.task.Task")
    return task



@torch.no_grad()
def check_labels(task: Task, batch_size: int = 1024) -> None:
    """Refuse, at prepare, labels that do not fit the model's output under the task's output
    function (wrong shape, a class index out of range), naming the examples: the model's output
    on the first example, repeated, is scored with every batch of labels (no forward pass per
    batch). A model whose output is not a tensor is checked on its first batch only."""
    examples = task.example_source()
    x, y = next(iter(examples.batches(1)))
    output = task.model(x)
    batches = examples.batches(batch_size) if isinstance(output, torch.Tensor) else [(x, y)]
    z0 = 0
    for _, labels in batches:
        z1 = z0 + len(labels)
        try:
            scored = task.output(output.expand(len(labels), *output.shape[1:]) if isinstance(output, torch.Tensor)
                                 else output, labels)
            if tuple(scored.shape) != (len(labels),):
                raise ValueError(f"it gave shape {tuple(scored.shape)}, not one value per example ({len(labels)},)")
        except (IndexError, RuntimeError, ValueError) as error:
            ids = task.example_ids[z0:z1]
            raise ValueError(f"labels of examples {ids[:5]}{' ...' if len(ids) > 5 else ''} (positions {z0}..{z1 - 1}) "
                             f"do not fit the model's output {_shape(output)} under output function "
                             f"{task.output_fn!r}: {error}; fix the task's labels") from None
        z0 = z1


def _shape(output: object) -> str:
    return f"of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else f"({type(output).__name__})"
