"""Baseline attributions (coar.baselines) against closed forms, against captum, and against COAR.

On a model whose output is linear in its units, ablating unit j changes the output by
v_j * (fill_j - a_j) summed over the unit's positions (v: the readout weights, a: the unit's
value), whatever else is ablated. Leave-one-out, grad x param and COAR must all recover exactly
that; conductance recovers it too (a unit's contribution from the zero input, up to the ends of
captum's quadrature), and internal influence the path-averaged gradient -v_j.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import NeuronConductance
from torch import nn

from coar import baselines, solver
from coar.attributions import LinearModels
from coar.components import discover
from coar.evaluate import correlation, predict
from coar.forward import run_masked
from coar.masks import sample_masks
from coar.outputs import margin


def first_output(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The model's first output, a scalar per example that is linear in the units."""
    return output[:, 0]


class LinearUnits(nn.Module):
    """Units = the neurons of `hidden`; the output is a linear readout of them."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(5, 7)
        self.readout = nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.hidden(x))

    def closed_form(self, x: torch.Tensor, mode: str) -> np.ndarray:
        """(n x 7) effect of ablating each unit: v_j * (fill_j - a_j)."""
        a = self.hidden(x)
        fill = self.hidden.bias if mode == "weight" else torch.zeros(7)
        return (self.readout.weight[0] * (fill - a)).detach().numpy()

    def readout_gradient(self, n: int) -> np.ndarray:
        return self.readout.weight[0].detach().expand(n, -1).numpy()


class ConvUnits(nn.Module):
    """Units = the filters of `conv` (25 positions each); the output is a linear readout of the feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.readout = nn.Linear(4 * 5 * 5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.conv(x).flatten(1))

    def closed_form(self, x: torch.Tensor, mode: str) -> np.ndarray:
        a = self.conv(x)
        fill = self.conv.bias if mode == "weight" else torch.zeros(4)
        v = self.readout.weight[0].reshape(4, 5, 5)
        return (v * (fill[:, None, None] - a)).sum((2, 3)).detach().numpy()

    def readout_gradient(self, n: int) -> np.ndarray:
        return self.readout.weight[0].reshape(4, 25).sum(1).detach().expand(n, -1).numpy()


def setup(model_type, seed=0):
    torch.manual_seed(seed)
    model = model_type().eval()
    x = torch.randn(6, 5) if model_type is LinearUnits else torch.randn(6, 2, 5, 5)
    components = discover(model, kinds=["linear", "conv"], include=["hidden", "conv"])
    return model, components, x, torch.zeros(6, dtype=torch.long)


@pytest.mark.parametrize("model_type", [LinearUnits, ConvUnits])
@pytest.mark.parametrize("mode", ["weight", "zero"])
@pytest.mark.parametrize("method", ["loo", "grad_x_param"])
def test_ablation_estimates_equal_the_closed_form_on_a_linear_model(model_type, mode, method):
    model, components, x, y = setup(model_type)
    result = baselines.attribute(method, model, components, x, y, first_output, mode=mode, max_batch=4)
    assert isinstance(result, LinearModels)  # the type of every attribution result (coar.attributions)
    assert result.weight.shape == (len(x), len(components)) and result.bias.shape == (len(x),)
    np.testing.assert_allclose(result.weight, model.closed_form(x, mode), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.bias, model(x)[:, 0].detach().numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("model_type", [LinearUnits, ConvUnits])
def test_conductance_is_each_units_contribution_from_the_zero_input(model_type):
    model, components, x, y = setup(model_type)
    result = baselines.attribute("conductance", model, components, x, y, first_output, max_batch=64)
    # Under the weight ablation, removing the contribution W_j x (a_j minus its bias) is the ablation itself.
    np.testing.assert_allclose(result.weight, model.closed_form(x, "weight"), rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("model_type", [LinearUnits, ConvUnits])
def test_internal_influence_is_minus_the_path_averaged_gradient(model_type):
    model, components, x, y = setup(model_type)
    result = baselines.attribute("internal_influence", model, components, x, y, first_output, n_steps=20)
    np.testing.assert_allclose(result.weight, -model.readout_gradient(len(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type", [LinearUnits, ConvUnits])
def test_coar_and_leave_one_out_agree_exactly_on_a_linear_model(model_type):
    model, components, x, y = setup(model_type)
    n = len(components)
    train, heldout = sample_masks(0, 0, 300, n, 0.3, "train"), sample_masks(0, 0, 50, n, 0.3, "heldout")
    outputs = run_masked(model, components, train, x, y, first_output)
    coar = solver.fit((train, outputs), "ols")
    loo = baselines.leave_one_out(model, components, x, y, first_output)
    np.testing.assert_allclose(coar.weight, loo.weight, atol=1e-4)
    np.testing.assert_allclose(coar.bias, loo.bias, atol=1e-4)
    truth = run_masked(model, components, heldout, x, y, first_output)
    assert correlation(truth, predict(loo.weight, loo.bias, heldout)) == pytest.approx(np.ones(len(x)), abs=1e-6)


class ReluNet(nn.Module):
    """Nonlinear conv and linear units, with in-place ReLUs right after the units."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x), inplace=True)), inplace=True).mean((2, 3))
        return self.head(torch.tanh(self.fc(h)))


@pytest.mark.parametrize("score", ["conductance", "internal_influence"])
def test_the_site_variant_computes_what_captum_computes(score):
    torch.manual_seed(1)
    model, x, y = ReluNet().eval(), torch.randn(5, 1, 6, 6), torch.randint(0, 3, (5,))
    components = discover(model, kinds=["conv", "linear"], exclude=["head"])
    by_captum = baselines.integrated(model, components, x, y, margin, score=score, n_steps=16)
    on_sites = baselines.integrated(model, components, x, y, margin, score=score, n_steps=16, captum=False)
    np.testing.assert_allclose(on_sites.weight, by_captum.weight, rtol=1e-4, atol=1e-6)
    assert np.abs(by_captum.weight).max() > 1e-3


def test_channel_conductance_is_neuron_conductance_summed_over_the_inputs():
    """What `conductance` computes for a unit is captum's NeuronConductance, summed over input features."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).eval()
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    components = discover(model, kinds=["linear"], include=["0"])
    ours = baselines.integrated(model, components, x, y, margin, score="conductance", n_steps=200)
    neuron = NeuronConductance(lambda a, t: margin(model(a), t), model[0])
    for j in range(6):
        per_input = neuron.attribute(x, neuron_selector=j, baselines=0.0, additional_forward_args=(y,), n_steps=200,
                                     method="gausslegendre")
        np.testing.assert_allclose(ours.weight[:, j], -per_input.sum(1).detach().numpy(), rtol=2e-2, atol=2e-3)


class HeadReadout(nn.Module):
    """Attention heads (no biases, so an all-zero input gives zero heads) and a linear readout of them."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, num_heads=4, bias=False, batch_first=True)
        self.readout = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, _ = self.attn(x, x, x, need_weights=False)
        return self.readout(a.mean(1))


def test_heads_are_scored_on_their_sites_where_captum_has_no_layer():
    torch.manual_seed(3)
    model, x, y = HeadReadout().eval(), torch.randn(5, 3, 8), torch.zeros(5, dtype=torch.long)
    components = discover(model, kinds=["head"])
    loo = baselines.attribute("loo", model, components, x, y, first_output)
    grad = baselines.attribute("grad_x_param", model, components, x, y, first_output)
    conductance = baselines.attribute("conductance", model, components, x, y, first_output)
    influence = baselines.attribute("internal_influence", model, components, x, y, first_output)
    # The output is linear in the heads: the first-order estimate is exact, and each head's
    # conductance from the zero input (where every head is 0) is all of its contribution.
    np.testing.assert_allclose(grad.weight, loo.weight, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(conductance.weight, loo.weight, rtol=2e-2, atol=1e-4)
    assert influence.weight.shape == (5, 4) and np.isfinite(influence.weight).all()


def test_every_method_shares_the_unablated_output_as_bias():
    torch.manual_seed(4)
    model, x, y = ReluNet().eval(), torch.randn(5, 1, 6, 6), torch.randint(0, 3, (5,))
    components = discover(model, kinds=["conv"])
    biases = [baselines.attribute(m, model, components, x, y, margin, n_steps=4).bias for m in baselines.METHODS]
    for bias in biases:
        np.testing.assert_allclose(bias, margin(model(x), y).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_unknown_methods_and_integer_inputs_without_a_token_embedding_are_refused():
    model, components, x, y = setup(LinearUnits)
    with pytest.raises(ValueError, match="unknown baseline 'shapley'"):
        baselines.attribute("shapley", model, components, x, y, first_output)
    with pytest.raises(ValueError, match="nn.Embedding that receives the input ids"):
        baselines.attribute("conductance", model, components, x.long(), y, first_output)


class AfterEmbedding(nn.Module):
    """Everything of `TokenNet` after its token embedding, taking the embedded tokens (B, T, 4) as input."""

    def __init__(self) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.randn(3, 4))
        self.hidden = nn.Linear(4, 6)
        self.attn = nn.MultiheadAttention(6, num_heads=2, batch_first=True)
        self.readout = nn.Linear(6, 3)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.hidden(e + self.position))
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.readout(a.mean(1))


class TokenNet(nn.Module):
    """Token ids (B, T) -> a token embedding, then `AfterEmbedding`; a position table is not the token embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(11, 4)
        self.rest = AfterEmbedding()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.rest(self.tokens(ids))


@pytest.mark.parametrize("score", ["conductance", "internal_influence"])
@pytest.mark.parametrize("captum", [True, False])
def test_token_inputs_integrate_along_the_token_embedding_as_a_float_model_would(score, captum):
    """Conductance on token ids = conductance of the same network fed the embedded tokens as float inputs."""
    torch.manual_seed(5)
    model = TokenNet().eval()
    ids, y = torch.randint(0, 11, (5, 3)), torch.randint(0, 3, (5,))
    on_ids = baselines.integrated(model, discover(model, kinds=["linear", "head"], exclude=["*readout"]), ids, y,
                                  margin, score=score, n_steps=12, captum=captum)
    with torch.no_grad():
        e = model.tokens(ids)
    on_floats = baselines.integrated(model.rest, discover(model.rest, kinds=["linear", "head"], exclude=["readout"]),
                                     e, y, margin, score=score, n_steps=12, captum=captum)
    np.testing.assert_allclose(on_ids.weight, on_floats.weight, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(on_ids.bias, on_floats.bias, rtol=1e-5, atol=1e-6)
    assert np.abs(on_ids.weight).max() > 1e-3


def test_first_order_and_leave_one_out_run_on_token_ids():
    """No float input is needed: the gradient reaches the units through the parameters."""
    torch.manual_seed(6)
    model = TokenNet().eval()
    ids, y = torch.randint(0, 11, (5, 3)), torch.randint(0, 3, (5,))
    components = discover(model, kinds=["linear", "head"], exclude=["*readout"])
    with torch.no_grad():
        e = model.tokens(ids)
    twin = discover(model.rest, kinds=["linear", "head"], exclude=["readout"])
    for method in ("loo", "grad_x_param"):
        on_ids = baselines.attribute(method, model, components, ids, y, margin)
        on_floats = baselines.attribute(method, model.rest, twin, e, y, margin)
        np.testing.assert_allclose(on_ids.weight, on_floats.weight, rtol=1e-4, atol=1e-6)


def test_two_embeddings_fed_the_ids_are_refused():
    class TwoTables(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Embedding(11, 4), nn.Embedding(11, 4)
            self.hidden = nn.Linear(4, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.hidden(self.a(ids) + self.b(ids)).mean(1)

    model = TwoTables().eval()
    ids = torch.randint(0, 11, (4, 3))
    with pytest.raises(ValueError, match=r"2 of the model's embeddings \['a', 'b'\]"):
        baselines.integrated(model, discover(model, kinds=["linear"]), ids, torch.zeros(4, dtype=torch.long),
                             margin, score="conductance", n_steps=4)


class RowsPerExample(nn.Module):
    """Each example (B, 3, 5) runs as three rows of one batch (B * 3, 5), like a sentence triple; output (B, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(5, 7)
        self.readout = nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.readout(self.hidden(x.reshape(-1, x.shape[-1])))
        return rows.reshape(len(x), -1, 2).sum(1)


@pytest.mark.parametrize("method", ["grad_x_param", "conductance"])
def test_models_with_several_rows_per_example_sum_each_examples_rows(method):
    """Linear in its units: both estimates equal leave-one-out, example by example."""
    torch.manual_seed(7)
    model, x, y = RowsPerExample().eval(), torch.randn(4, 3, 5), torch.zeros(4, dtype=torch.long)
    components = discover(model, kinds=["linear"], include=["hidden"])
    loo = baselines.attribute("loo", model, components, x, y, first_output)
    estimate = baselines.attribute(method, model, components, x, y, first_output, n_steps=50)
    # grad x param is exact; conductance up to the ends of captum's quadrature (as above)
    np.testing.assert_allclose(estimate.weight, loo.weight, rtol=1e-4 if method == "grad_x_param" else 2e-3, atol=1e-5)


class TokensMLP(nn.Module):
    """Per-token MLP, mean over tokens; run sequence-first inside (the batch on axis 1) or not."""

    def __init__(self, sequence_first: bool):
        super().__init__()
        self.sequence_first = sequence_first
        self.hidden, self.out = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):  # x: (B, T, 6)
        h = torch.tanh(self.hidden(x.transpose(0, 1) if self.sequence_first else x))
        return self.out(h.mean(0 if self.sequence_first else 1))


@pytest.mark.parametrize("method", ["grad_x_param", "internal_influence"])
def test_sequence_first_units_are_summed_per_example_not_per_position(method):
    torch.manual_seed(3)
    batch_first = TokensMLP(sequence_first=False).eval()
    sequence_first = TokensMLP(sequence_first=True).eval()
    sequence_first.load_state_dict(batch_first.state_dict())
    x, y = torch.randn(4, 5, 6), torch.tensor([0, 1, 2, 0])
    found = [baselines.attribute(method, m, discover(m, kinds=["linear"], include=["hidden"]), x, y, margin, n_steps=8)
             for m in (batch_first, sequence_first)]
    np.testing.assert_allclose(found[1].weight, found[0].weight, rtol=1e-4, atol=1e-6)
