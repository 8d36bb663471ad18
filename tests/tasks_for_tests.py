"""Task functions for the task-loading tests, addressed by specs like "tests.tasks_for_tests:task"."""

import torch
from torch import nn

from coar.task import Task, restoring


class TinyNet(nn.Module):
    """A 4-feature, 3-class classifier with BatchNorm (so eval mode matters)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def task(params: dict) -> Task:
    """``n`` (default 5) random examples for a randomly initialised TinyNet."""
    generator = torch.Generator().manual_seed(params.get("seed", 0))
    n = params.get("n", 5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.get("seed", 0))
        model = TinyNet()
    return Task(
        model=model,
        inputs=torch.randn(n, 4, generator=generator),
        labels=torch.randint(0, 3, (n,), generator=generator),
        reference_inputs=torch.randn(7, 4, generator=generator),
        info={"params": params},
    )


def records_restoring(params: dict) -> Task:
    """Records in its info whether coar was restoring a prepared task when it was called."""
    return Task(model=TinyNet(), inputs=torch.zeros(2, 4), labels=torch.zeros(2).long(), info={"restoring": restoring()})


def labels_one_short(params: dict) -> Task:
    """Builds a task whose labels have one entry fewer than its inputs."""
    return Task(model=TinyNet(), inputs=torch.zeros(5, 4), labels=torch.zeros(4, dtype=torch.long))


def no_examples(params: dict) -> Task:
    """Builds a task with zero examples."""
    return Task(model=TinyNet(), inputs=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))


def returns_a_model(params: dict) -> nn.Module:
    """Returns a model instead of a Task."""
    return TinyNet()


NOT_CALLABLE = 42


def margin_inf_for_class_0(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The margin, but +infinity for examples of class 0 (an output function that overflows)."""
    from coar.outputs import margin

    return torch.where(labels == 0, torch.inf, margin(output, labels))


def constant_output(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1.0 for every example, whatever the model does (correlations are then undefined)."""
    return torch.ones(len(labels))


class TiedNet(nn.Module):
    """Two Linears sharing one weight Parameter, then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.b(torch.relu(self.a(x))))


def tied(params: dict) -> Task:
    """A TiedNet task: its tied groups cannot be ablated exactly."""
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TiedNet()
    return Task(model=model, inputs=torch.randn(3, 4, generator=generator), labels=torch.tensor([0, 1, 2]))


def with_validation(params: dict) -> Task:
    """A randomly initialised TinyNet with ``n`` (default 12) examples and ``n_validation`` (default
    9) validation examples, labels 0, 1, 2 in turn, and groups ``first`` (label 0) and ``others``:
    a run an edit can be checked on (``validation: false``: none)."""
    generator = torch.Generator().manual_seed(params.get("seed", 0))
    n, n_validation = params.get("n", 12), params.get("n_validation", 9)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.get("seed", 0))
        model = TinyNet()
    labels, validation_labels = torch.arange(n) % 3, torch.arange(n_validation) % 3
    validation = params.get("validation", True)
    return Task(
        model=model,
        inputs=torch.randn(n, 4, generator=generator),
        labels=labels,
        groups=["first" if y == 0 else "others" for y in labels.tolist()],
        validation_inputs=torch.randn(n_validation, 4, generator=generator) if validation else None,
        validation_labels=validation_labels if validation else None,
        validation_groups=["first" if y == 0 else "others" for y in validation_labels.tolist()] if validation else None,
    )
