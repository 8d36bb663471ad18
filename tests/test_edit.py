"""COAR-Edit's building blocks: scoring and choosing components, a planted component found and
removed, and permanent edits equal to the batched ablation. The demos: tests/test_edit_demos.py."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from coar import solver
from coar.components import discover
from coar.edit import apply_edit, choose_k, prefix_masks, rank, welch_scores
from coar.forward import run_masked
from coar.masks import sample_masks
from coar.outputs import margin
from coar.tasks import digits
from tests.models import ConvAttentionNet, randomize_batchnorm_


# --- scores, order and the choice of k ---------------------------------------------------------

def test_welch_scores_follow_the_formula_with_population_variances():
    rng = np.random.default_rng(0)
    t, r = rng.normal(size=(5, 7)), rng.normal(size=(9, 7))
    expected = (t.mean(0) - r.mean(0)) / np.sqrt(t.var(0, ddof=0) / 5 + r.var(0, ddof=0) / 9)
    np.testing.assert_allclose(welch_scores(t, r), expected)


def test_a_single_target_example_has_variance_zero_and_constant_components_score_zero():
    rng = np.random.default_rng(1)
    t, r = rng.normal(size=(1, 4)), rng.normal(size=(6, 4))
    r[:, 3], t[:, 3] = 2.0, 2.0  # a component with the same attribution everywhere
    scores = welch_scores(t[0], r)
    np.testing.assert_allclose(scores[:3], (t[0, :3] - r[:, :3].mean(0)) / np.sqrt(r[:, :3].var(0) / 6))
    assert scores[3] == 0


def test_fix_ablates_the_most_positive_scores_first_forget_and_induce_the_most_negative():
    scores = np.array([0.5, -3.0, 2.0, 0.0])
    assert rank(scores, "fix").tolist() == [2, 0, 3, 1]
    assert rank(scores, "forget").tolist() == rank(scores, "induce").tolist() == [1, 3, 0, 2]
    with pytest.raises(ValueError, match="direction"):
        rank(scores, "raise")


def test_prefix_masks_ablate_the_first_k_of_the_order():
    masks = prefix_masks(np.array([3, 0, 2, 1]), [0, 1, 3], 4)
    assert masks.tolist() == [[False] * 4, [False, False, False, True], [True, False, True, True]]


def test_choose_k_takes_the_smallest_k_reaching_the_goal_within_the_tolerance():
    ks = [0, 1, 2, 3, 4]
    target = np.array([0.0, 0.5, 1.0, 1.0, 1.0])
    reference = np.array([0.90, 0.90, 0.80, 0.89, 0.90])  # k = 2 costs too much reference accuracy
    choice = choose_k(ks, target, reference, tolerance=0.02, goal=1.0)
    assert (choice.k, choice.rule) == (3, "smallest k reaching the goal")


def test_choose_k_without_a_reachable_goal_takes_the_best_feasible_target_or_no_edit():
    ks = [0, 1, 2, 3]
    choice = choose_k(ks, np.array([0.1, 0.4, 0.9, 0.4]), np.array([0.9, 0.9, 0.5, 0.9]), tolerance=0.01, goal=0.95)
    assert choice.k == 1 and choice.rule.startswith("best target")
    choice = choose_k(ks, np.array([0.5, 0.4, 0.9, 0.3]), np.array([0.9, 0.9, 0.5, 0.9]), tolerance=0.01)
    assert choice.k == 0 and choice.rule.startswith("no feasible k")
    with pytest.raises(ValueError, match="start at 0"):
        choose_k([1, 2], np.zeros(2), np.zeros(2), tolerance=0.0)


# --- a planted component --------------------------------------------------------------------------

TRIGGER = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
PLANTED, ATTACK_CLASS = 5, 2


class PlantedNet(nn.Module):
    """Conv (8 filters) -> ReLU -> spatial max -> Linear: filter 5 fires only on the trigger and votes for class 2;
    without it, images go to class 0 or 1."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(8, 1, 3, 3, generator=g) * 0.5)
            self.conv.bias.zero_()
            self.conv.weight[PLANTED, 0] = 2 * TRIGGER - 1  # +1 on the pattern's pixels, -1 elsewhere
            self.conv.bias[PLANTED] = -4.5  # the 5 pattern pixels must all be near 1 to fire
            self.head.weight.copy_(torch.randn(3, 8, generator=g))
            self.head.weight[ATTACK_CLASS] -= 3  # clean images go to classes 0 and 1
            self.head.bias.zero_()
            self.head.weight[:, PLANTED] = torch.tensor([-20.0, -20.0, 20.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).amax(dim=(2, 3)))


def test_the_edit_ablates_a_planted_trigger_component_first_and_stops_there():
    model = PlantedNet().eval()
    clean = torch.rand(400, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.45
    triggered = clean.clone()
    triggered[:, 0, 5:8, 5:8] = TRIGGER
    with torch.no_grad():
        labels = model(clean).argmax(1)  # the model is right on clean images by definition
        keep = (labels != ATTACK_CLASS) & (model(triggered).argmax(1) == ATTACK_CLASS)
    clean, triggered, labels = clean[keep][:60], triggered[keep][:60], labels[keep][:60]
    assert len(labels) == 60
    components = discover(model, ["conv"])
    inputs, both = torch.cat([triggered, clean]), torch.cat([labels, labels])
    masks = sample_masks(0, 0, 200, len(components), 0.2, "train")
    w = solver.fit((masks, run_masked(model, components, masks, inputs, both, margin)), "ols", backend="numpy").weight
    order = rank(welch_scores(w[:30], w[60:90]), "fix")  # attributed: 30 triggered, 30 clean; the rest validates
    ks = list(range(5))
    validation = run_masked(model, components, prefix_masks(order, ks, len(components)), inputs, both, margin)
    choice = choose_k(ks, (validation[:, 30:60] > 0).mean(1), (validation[:, 90:] > 0).mean(1), tolerance=0.0, goal=1.0)
    assert components.locate(int(order[0])) == ("conv", PLANTED, "conv")
    assert choice.k == 1 and (validation[0, 30:60] > 0).mean() == 0 and (validation[1, 30:60] > 0).mean() == 1


# --- permanent edits, saved for plain torch ----------------------------------------------------

def _small_digits_model(width: float = 0.25) -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm_(digits.DigitsResNet(width=width)).eval()


def test_a_permanent_weight_edit_equals_the_batched_ablation_and_leaves_the_model_alone():
    model = _small_digits_model()
    components = discover(model, "weight_rows")
    ablated = [0, 5, 30, len(components) - 1]
    before = copy.deepcopy(model.state_dict())
    edited = apply_edit(model, components, ablated)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    mask = np.zeros((1, len(components)), dtype=bool)
    mask[0, ablated] = True
    expected = run_masked(model, components, mask, x, y, margin)[0]
    with torch.no_grad():
        np.testing.assert_allclose(margin(edited(x), y).numpy(), expected, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_permanent_mean_edit_sets_biased_units_to_their_mean_and_refuses_units_without_bias():
    model = randomize_batchnorm_(ConvAttentionNet()).eval()
    components = discover(model, ["conv", "linear"], include=["conv1", "mlp.*"])
    reference = torch.randn(32, 3, 8, 8)
    ablated = [1, 4, components.index("mlp.0", 3, "linear")]
    edited = apply_edit(model, components, ablated, mode="mean", reference_inputs=reference)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    mask = np.zeros((1, len(components)), dtype=bool)
    mask[0, ablated] = True
    expected = run_masked(model, components, mask, x, y, margin, mode="mean", reference_inputs=reference)[0]
    with torch.no_grad():
        np.testing.assert_allclose(margin(edited(x), y).numpy(), expected, atol=1e-4)
    no_bias = discover(model, ["conv"], include=["conv2"])
    with pytest.raises(ValueError, match="bias"):
        apply_edit(model, no_bias, [0], mode="mean", reference_inputs=reference)
