"""The task interface: a model, the examples to attribute, and how to score them.

A task is produced by a task function named by a spec, ``"package.module:function"`` or
``"package.module"`` (then the function ``task``), called with a dict of parameters. The
workflow's prepare step builds the task once and saves it; later steps load the saved task so
they never retrain.
"""

import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from coar.atomic import atomic_path
from coar.constants import DEFAULT_TASK_FUNCTION
from coar.outputs import OutputFn, resolve_output_fn
from coar.spec import import_object

SAVE_FORMAT = 1


@dataclass
class Task:
    """What COAR attributes: ``output_fn(model(inputs), labels)`` per example.

    Construction validates the fields and puts the model in eval mode (BatchNorm and dropout
    must not change behaviour between ablated forward passes).
    """

    model: torch.nn.Module
    inputs: torch.Tensor
    labels: torch.Tensor
    output_fn: str = "margin"
    example_ids: list[str] | None = None
    reference_inputs: torch.Tensor | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(self.model).__name__}")
        for name in ("inputs", "labels"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.dim() == 0:
                raise TypeError(f"{name} must be a Tensor with a leading example dimension")
        n = len(self.inputs)
        if n < 1:
            raise ValueError("a task needs at least one example, inputs is empty")
        if len(self.labels) != n:
            raise ValueError(f"inputs has {n} examples but labels has {len(self.labels)}")
        if self.example_ids is None:
            self.example_ids = [str(i) for i in range(n)]
        self.example_ids = [str(i) for i in self.example_ids]
        if len(self.example_ids) != n or len(set(self.example_ids)) != n:
            raise ValueError(f"example_ids must be {n} unique ids, one per example")
        if self.reference_inputs is not None and (
            not isinstance(self.reference_inputs, torch.Tensor) or len(self.reference_inputs) < 1
        ):
            raise TypeError("reference_inputs must be None or a non-empty Tensor")
        if not isinstance(self.output_fn, str):
            raise TypeError("output_fn must be a string (a registry name or 'package.module:function')")
        resolve_output_fn(self.output_fn)  # fail now on a typo, not after hours of ablations
        try:
            json.dumps(self.info)
        except TypeError as error:
            raise TypeError(f"task info must be JSON-serialisable: {error}") from None
        self.model.eval()

    @property
    def n_examples(self) -> int:
        """Number of examples to attribute."""
        return len(self.inputs)

    @property
    def output(self) -> OutputFn:
        """The output function named by ``output_fn``, as a callable."""
        return resolve_output_fn(self.output_fn)


def load_task(spec: str, params: dict | None = None) -> Task:
    """Build the task named by ``spec`` by calling its task function with ``params`` (default {})."""
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise TypeError(f"task {spec!r}: params must be a dict, got {type(params).__name__}")
    function = import_object(spec, default_attr=DEFAULT_TASK_FUNCTION, kind="task")
    try:
        task = function(dict(params))
    except Exception as error:
        raise RuntimeError(f"task function {spec!r} raised {type(error).__name__}: {error}") from error
    if not isinstance(task, Task):
        raise TypeError(f"task function {spec!r} returned {type(task).__name__}, not a coar.task.Task")
    return task


def save_task(task: Task, path: str | os.PathLike) -> None:
    """Save ``task`` (model included) to ``path`` atomically: a killed job leaves no partial file."""
    payload = {"format": SAVE_FORMAT, **{f.name: getattr(task, f.name) for f in fields(Task)}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_saved_task(path: str | os.PathLike, map_location: Any = "cpu") -> Task:
    """Load a task written by :func:`save_task` (tensors and model onto ``map_location``)."""
    payload = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != SAVE_FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a task saved by coar.task.save_task (format {SAVE_FORMAT})")
    payload.pop("format")
    return Task(**payload)
