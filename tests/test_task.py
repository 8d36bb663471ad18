"""Task interface: loading tasks by spec, validation, and the atomic save/load round trip."""

import os
from pathlib import Path

import pytest
import torch

import coar.task
from coar.outputs import lm_margin, margin
from coar.task import Task, load_saved_task, load_task, save_task
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


def test_saved_task_loads_with_identical_fields_and_model_outputs(tmp_path):
    task = load_task(HELPERS, {"n": 6})
    path = tmp_path / "sub" / "task.pt"
    save_task(task, path)
    loaded = load_saved_task(path)
    for name in ("inputs", "labels", "reference_inputs"):
        assert torch.equal(getattr(loaded, name), getattr(task, name))
    assert (loaded.output_fn, loaded.example_ids, loaded.info) == (task.output_fn, task.example_ids, task.info)
    assert not loaded.model.training
    with torch.no_grad():
        assert torch.equal(loaded.model(loaded.inputs), task.model(task.inputs))


def test_failed_save_leaves_no_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "task.pt"
    path.write_bytes(b"previous")

    def save_then_crash(obj, file):
        Path(file).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(coar.task.torch, "save", save_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_task(small_task(), path)
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["task.pt"]

    with pytest.raises(OSError, match="disk full"):
        save_task(small_task(), tmp_path / "new.pt")
    assert os.listdir(tmp_path) == ["task.pt"]


def test_loading_a_file_that_is_not_a_saved_task_fails_clearly(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(2)}, path)
    with pytest.raises(ValueError, match="not a task saved by coar.task.save_task"):
        load_saved_task(path)
