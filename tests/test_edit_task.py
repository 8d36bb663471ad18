"""A task's optional groups and validation examples: normalised by Task, saved by prepare as data,
reopened from the run folder (not re-decided by task code) and refused when changed."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from coar import steps
from coar.run import Run
from coar.task import Task
from tests.tasks_for_tests import TinyNet

SPEC = "tests.test_edit_task:with_validation"


def with_validation(params: dict) -> Task:
    """Six examples in groups a/b and four validation examples in groups x/y (ids fixed by `seed`)."""
    generator = torch.Generator().manual_seed(params.get("seed", 0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyNet()
    return Task(model=model, inputs=torch.randn(6, 4, generator=generator), labels=torch.tensor([0, 1, 2, 0, 1, 2]),
                groups=["a", "a", "b", "b", "b", "a"], validation_inputs=torch.randn(4, 4, generator=generator),
                validation_labels=torch.tensor([0, 1, 2, 0]), validation_groups={"x": [3, 0], "y": [1]})


def test_groups_given_as_a_name_per_example_become_named_positions():
    task = with_validation({})
    assert task.groups == {"a": [0, 1, 5], "b": [2, 3, 4]}
    assert task.validation_groups == {"x": [0, 3], "y": [1]}
    assert task.n_validation == 4


@pytest.mark.parametrize("groups, message", [(["a"] * 5, "needs 6 names"), ({"a": [6]}, "positions 0..5"),
                                             ({"a": []}, "at least one"), ("abc", "list of names")])
def test_malformed_groups_are_refused(groups, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Task(model=TinyNet(), inputs=torch.zeros(6, 4), labels=torch.zeros(6, dtype=torch.long), groups=groups)


def test_validation_needs_inputs_and_labels_of_the_same_length():
    with pytest.raises(ValueError, match="validation_inputs has 3 examples but validation_labels has 2"):
        Task(model=TinyNet(), inputs=torch.zeros(2, 4), labels=torch.zeros(2, dtype=torch.long),
             validation_inputs=torch.zeros(3, 4), validation_labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="both be Tensors"):
        Task(model=TinyNet(), inputs=torch.zeros(2, 4), labels=torch.zeros(2, dtype=torch.long),
             validation_inputs=torch.zeros(3, 4))


def test_prepare_saves_validation_and_groups_and_reopen_reads_them_back(tmp_path):
    info = steps.prepare(SPEC, {}, "linear", ["*"], [], tmp_path)
    assert info["n_validation"] == 4 and info["validation_fingerprint"] and info["groups_fingerprint"]
    original = with_validation({})
    prepared = Run(tmp_path).reopen(SPEC, {})
    assert torch.equal(prepared.validation[0], original.validation_inputs)
    assert torch.equal(prepared.validation[1], original.validation_labels)
    assert prepared.groups == original.groups and prepared.validation_groups == original.validation_groups


def test_changed_validation_examples_or_groups_are_refused_on_reopen(tmp_path):
    steps.prepare(SPEC, {}, "linear", ["*"], [], tmp_path)
    groups = tmp_path / "groups.json"
    saved = groups.read_text()
    groups.write_text(json.dumps({"examples": {"a": [0]}, "validation": {}}))
    with pytest.raises(RuntimeError, match="groups fingerprint"):
        Run(tmp_path).reopen(SPEC, {})
    groups.write_text(saved)
    arrays = load_file(tmp_path / "examples.safetensors")
    arrays["validation_inputs"] += 1
    save_file(arrays, tmp_path / "examples.safetensors")
    with pytest.raises(RuntimeError, match="validation examples fingerprint"):
        Run(tmp_path).reopen(SPEC, {})


def test_the_digits_validation_split_leaves_the_attributed_examples_unchanged():
    from coar.tasks.digits import load_digits_split

    without, with_validation_split = load_digits_split(0.2, 0), load_digits_split(0.2, 0, 0.1)
    assert torch.equal(without.test_x, with_validation_split.test_x)
    assert len(with_validation_split.validation_x) == 180
    train = with_validation_split.train_x.flatten(1)
    validation = with_validation_split.validation_x.flatten(1)
    assert not (validation[:, None, :] == train[None]).all(dim=2).any()
