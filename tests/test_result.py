"""The result object (coar.Attributions): names, tables, predictions, held-out scoring, data
frames and real ablation, on small hand-made attributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import coar
from coar.components import discover
from coar.evaluate import predict, score
from coar.components import component_names
from coar.result import Attributions


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()


def make(weight: np.ndarray, model: nn.Module | None = None, **info) -> Attributions:
    components = discover(model or small_model(), "linear")
    bias = np.arange(len(weight), dtype=np.float32)
    return Attributions(weight.astype(np.float32), bias, components, [f"ex{i}" for i in range(len(weight))],
                        {"ablation": "weight", **info})


def random_result(n: int = 4, seed: int = 0) -> Attributions:
    return make(np.random.default_rng(seed).normal(size=(n, 5)))


def test_the_package_exports_the_result_object_under_one_name():
    assert coar.Attributions is Attributions
    assert coar.open.__module__ == "coar.result"


def test_components_name_every_column_with_its_module_unit_kind_and_layer():
    result = random_result()
    assert [c.name for c in result.components] == ["0[0]", "0[1]", "0[2]", "2[0]", "2[1]"]
    assert [(c.module, c.unit, c.kind, c.layer) for c in result.components][3] == ("2", 0, "linear", 1)


def test_a_module_with_units_of_two_kinds_names_them_by_kind():
    assert component_names([("attn", 0, "head"), ("attn", 0, "linear"), ("fc", 0, "linear")]) == [
        "attn:head[0]", "attn:linear[0]", "fc[0]"]


def test_top_lists_the_largest_effects_by_magnitude_with_their_signs():
    result = make(np.array([[0.1, -3.0, 2.0, 0.0, -0.5], [1, 1, 1, 1, 1]]))
    rows = result.top("ex0", 3)
    assert [(r.component, r.predicted) for r in rows] == [("0[1]", -3.0), ("0[2]", 2.0), ("2[1]", -0.5)]
    assert result.top(0, 3) == rows and result.top(-2, 3) == rows  # by position too
    assert "0[1]" in str(rows).splitlines()[1]


def test_an_unknown_example_or_component_is_refused_with_the_closest_names():
    result = random_result()
    with pytest.raises(ValueError, match="closest: ex1"):
        result.top("ex11")
    with pytest.raises(ValueError, match=r"no component named '0\[7\]'.*closest"):
        result.effects("0[7]")
    with pytest.raises(IndexError, match="out of range"):
        result.top(4)


def test_effects_are_a_components_column_by_name_or_position():
    result = random_result()
    np.testing.assert_array_equal(result.effects("2[0]"), result.weight[:, 3])
    np.testing.assert_array_equal(result.effects(3), result.weight[:, 3])


def test_moved_most_lists_raised_and_lowered_examples_separately():
    result = make(np.array([[1.0, 0, 0, 0, 0], [-2.0, 0, 0, 0, 0], [3.0, 0, 0, 0, 0], [0.0, 0, 0, 0, 0]]))
    raises, lowers = result.moved_most("0[0]", 5)
    assert [r.example for r in raises] == ["ex2", "ex0"]
    assert [r.example for r in lowers] == ["ex1"]


def test_evaluate_scores_as_the_evaluate_step_does():
    result = random_result(n=3)
    rng = np.random.default_rng(1)
    masks = rng.random((30, 5)) < 0.3
    outputs = predict(result.weight, result.bias, masks) + rng.normal(scale=0.1, size=(30, 3))
    assert result.evaluate(masks, outputs) == score(outputs, predict(result.weight, result.bias, masks),
                                                    list(result.example_ids))
    with pytest.raises(ValueError, match="5 components"):
        result.evaluate(masks[:, :4], outputs)


def test_long_and_wide_frames_hold_every_weight_once():
    result = random_result(n=3)
    long, wide = result.to_pandas("long"), result.to_pandas("wide")
    assert len(long) == 15 and list(long.columns) == ["example", "component", "module", "layer", "unit", "kind",
                                                      "predicted"]
    row = long[(long.example == "ex2") & (long.component == "2[1]")]
    assert float(row.predicted.iloc[0]) == result.weight[2, 4]
    np.testing.assert_array_equal(wide.drop(columns="bias").to_numpy(), result.weight)
    np.testing.assert_array_equal(wide["bias"].to_numpy(), result.bias)
    with pytest.raises(ValueError, match="form"):
        result.to_pandas("tall")


def test_ablate_returns_an_edited_copy_with_the_named_units_zeroed():
    model = small_model()
    result = make(np.zeros((2, 5)), model)
    edited = result.ablate(model, ["0[1]", 4])
    assert torch.count_nonzero(edited[0].weight[1]) == 0 and torch.count_nonzero(edited[2].weight[1]) == 0
    assert torch.count_nonzero(model[0].weight[1]) > 0  # the original is untouched
    torch.testing.assert_close(edited[0].weight[0], model[0].weight[0])


def test_sizes_that_disagree_are_refused():
    with pytest.raises(ValueError, match="do not agree"):
        Attributions(np.zeros((2, 4), np.float32), np.zeros(2, np.float32), discover(small_model(), "linear"),
                     ["a", "b"], {})
