"""Task interface: loading tasks by spec, validation, examples as tensors or a Dataset, restoring mode."""

import pytest
import torch

import coar.task
from coar.outputs import lm_margin, margin
from coar.task import Task, load_task, restoring
from tests.tasks_for_tests import TinyNet

HELPERS = "tests.tasks_for_tests"


def test_load_task_calls_the_named_function_with_params():
    task = load_task(f"{HELPERS}:task", {"n": 9, "seed": 3})
    assert isinstance(task, Task)
    assert task.n_examples == 9
    assert task.info == {"params": {"n": 9, "seed": 3}}


def test_module_only_spec_calls_its_function_named_task():
    assert load_task(HELPERS).n_examples == 5


def test_load_task_without_params_passes_an_empty_dict():
    assert load_task(f"{HELPERS}:task").info == {"params": {}}


def test_spec_errors_name_the_task_spec():  # every kind of bad spec: tests/test_spec.py
    with pytest.raises(ImportError, match="task spec 'tests.no_such_tasks'.*no such module 'tests.no_such_tasks'"):
        load_task("tests.no_such_tasks")
    with pytest.raises(ValueError, match="bad task spec"):
        load_task(f"{HELPERS}:")


def test_function_returning_something_else_than_a_task_is_rejected():
    with pytest.raises(TypeError, match=f"'{HELPERS}:returns_a_model' returned TinyNet, not a coar.task.Task"):
        load_task(f"{HELPERS}:returns_a_model")


def test_inputs_labels_length_mismatch_names_the_spec():
    with pytest.raises(RuntimeError, match=f"'{HELPERS}:labels_one_short'.*5 examples but labels has 4") as caught:
        load_task(f"{HELPERS}:labels_one_short")
    assert isinstance(caught.value.__cause__, ValueError)


def test_task_without_examples_names_the_spec():
    with pytest.raises(RuntimeError, match=f"'{HELPERS}:no_examples'.*at least one example"):
        load_task(f"{HELPERS}:no_examples")


def test_params_must_be_a_dict():
    with pytest.raises(TypeError, match="params must be a dict"):
        load_task(HELPERS, [("n", 3)])


def small_task(**fields) -> Task:
    return Task(**{"model": TinyNet(), "inputs": torch.zeros(3, 4), "labels": torch.zeros(3).long(), **fields})


def test_task_defaults_ids_to_positions_and_puts_the_model_in_eval_mode():
    task = small_task()
    assert task.example_ids == ["0", "1", "2"]
    assert not task.model.training


def test_task_output_resolves_its_output_fn():
    assert small_task().output is margin
    assert small_task(output_fn="lm_margin").output is lm_margin


def test_task_rejects_an_unknown_output_fn_at_construction():
    with pytest.raises(ValueError, match="unknown output function 'margn'"):
        small_task(output_fn="margn")


def test_task_rejects_duplicate_or_miscounted_example_ids():
    with pytest.raises(ValueError, match="3 unique ids"):
        small_task(example_ids=["a", "b", "a"])
    with pytest.raises(ValueError, match="3 unique ids"):
        small_task(example_ids=["a", "b"])


def test_task_rejects_info_that_is_not_json_serialisable():
    with pytest.raises(TypeError, match="JSON"):
        small_task(info={"scores": torch.ones(2)})


class Pairs(torch.utils.data.Dataset):
    """(input, label) pairs of two tensors, as a map-style Dataset."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.inputs[i], int(self.labels[i])


def test_a_dataset_task_counts_ids_and_streams_the_same_batches_as_tensors():
    inputs, labels = torch.randn(7, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    as_dataset = Task(model=TinyNet(), examples=Pairs(inputs, labels))
    as_tensors = Task(model=TinyNet(), inputs=inputs, labels=labels)
    assert as_dataset.n_examples == 7 and as_dataset.example_ids == [str(i) for i in range(7)]
    for a, b in zip(as_dataset.example_source().batches(3), as_tensors.example_source().batches(3), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_task_takes_examples_as_tensors_or_a_dataset_not_both():
    with pytest.raises(TypeError, match="not both"):
        Task(model=TinyNet(), inputs=torch.zeros(2, 4), labels=torch.zeros(2).long(),
             examples=Pairs(torch.zeros(2, 4), torch.zeros(2)))
    with pytest.raises(TypeError, match="map-style torch.utils.data.Dataset"):
        Task(model=TinyNet(), examples=[(torch.zeros(4), 0)])
    with pytest.raises(ValueError, match="at least one example"):
        Task(model=TinyNet(), examples=Pairs(torch.zeros(0, 4), torch.zeros(0)))


def test_restoring_is_true_only_inside_a_restoring_load():
    assert load_task(f"{HELPERS}:records_restoring").info == {"restoring": False}
    assert load_task(f"{HELPERS}:records_restoring", restore=True).info == {"restoring": True}
    assert not restoring()
