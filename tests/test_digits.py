"""The embedded digits task: a real, accurate, deterministic model on a stratified test split."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from coar.outputs import margin
from coar.task import load_task
from coar.tasks import DEFAULT_TASK
from coar.tasks.digits import DigitsResNet, count_conv_filters, load_digits_split, task

TINY = {"width": 0.25, "epochs": 2}


@pytest.fixture(scope="module")
def default_task():
    """The full-size default task, trained once for this module (seconds on two cores)."""
    return load_task(DEFAULT_TASK)


@pytest.mark.slow
def test_default_task_reaches_97_percent_test_accuracy(default_task):
    with torch.no_grad():
        predictions = default_task.model(default_task.inputs).argmax(dim=1)
    accuracy = (predictions == default_task.labels).float().mean().item()
    assert accuracy >= 0.97
    assert default_task.info["test_accuracy"] == pytest.approx(accuracy)


def test_default_model_has_at_least_256_conv_filters(default_task):
    filters = sum(m.out_channels for m in default_task.model.modules() if isinstance(m, nn.Conv2d))
    assert filters >= 256
    assert default_task.info["conv_filters"] == filters


def test_default_task_scores_margins_and_has_positive_margins_where_correct(default_task):
    with torch.no_grad():
        margins = default_task.output(default_task.model(default_task.inputs), default_task.labels)
    assert default_task.output is margin
    assert (margins > 0).float().mean().item() >= 0.97


def test_test_split_is_a_stratified_fifth_of_digits_identified_by_dataset_index(default_task):
    digits = load_digits()
    ids = np.array([int(i) for i in default_task.example_ids])
    assert len(set(ids)) == default_task.n_examples == 360
    assert torch.equal(default_task.labels, torch.from_numpy(digits.target[ids]).long())
    test_counts = np.bincount(digits.target[ids], minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * np.bincount(digits.target)) <= 1)


def test_inputs_are_standardised_float_images(default_task):
    inputs = default_task.inputs
    assert inputs.shape == (360, 1, 8, 8) and inputs.dtype == torch.float32
    assert abs(inputs.mean().item()) < 0.1 and abs(inputs.std().item() - 1) < 0.1


def test_reference_inputs_are_256_training_images(default_task):
    reference = default_task.reference_inputs.flatten(1)
    assert reference.shape == (256, 64)
    train_images = load_digits_split(test_fraction=0.2, split_seed=0).train_x.flatten(1)
    assert (reference[:, None, :] == train_images[None]).all(dim=2).any(dim=1).all()
    assert not (reference[:, None, :] == default_task.inputs.flatten(1)[None]).all(dim=2).any()


def trained_with_threads(threads: int, params: dict) -> dict[str, torch.Tensor]:
    """State dict of the task's model trained while torch is set to ``threads`` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return task(params).model.state_dict()
    finally:
        torch.set_num_threads(previous)


def test_same_seed_trains_identical_weights_whatever_the_thread_count():
    first, second = trained_with_threads(1, TINY), trained_with_threads(2, TINY)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_different_seeds_train_different_weights():
    first, second = task({**TINY, "seed": 0}), task({**TINY, "seed": 1})
    assert not torch.equal(first.model.head.weight, second.model.head.weight)
    assert first.example_ids == second.example_ids  # the split depends on split_seed only


def test_training_leaves_global_rng_and_thread_count_untouched():
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    task(TINY)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.get_num_threads() == threads


def test_width_scales_the_conv_filters():
    assert count_conv_filters(DigitsResNet(width=1.0)) == 352
    assert count_conv_filters(DigitsResNet(width=0.25)) == 88
    assert task(TINY).info["conv_filters"] == 88


def test_unknown_params_are_rejected_with_the_valid_names():
    with pytest.raises(ValueError, match=r"\['epoch'\].*'epochs'"):
        task({"epoch": 3})
