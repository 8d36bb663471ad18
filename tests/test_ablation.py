"""Batched in-place ablation equals the published procedure: deep-copy the model, zero weights."""

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from coar.ablation import Ablation, ablate, ablate_weights_, unit_fills
from coar.components import discover
from coar.forward import run_masked
from tests.models import ConvAttentionNet, randomize_batchnorm_


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def random_masks(k: int, n_components: int, alpha: float, seed: int) -> torch.Tensor:
    return torch.rand(k, n_components, generator=torch.Generator().manual_seed(seed)) < alpha


@torch.no_grad()
def batched_outputs(model, components, masks, x, **kwargs) -> torch.Tensor:
    """One forward pass for all k masks: (k, n, ...)."""
    k = len(masks)
    with ablate(model, components, masks, **kwargs) as ablation:
        out = model(x.repeat(k, *([1] * (x.dim() - 1))))
        ablation.check_reached()
    return out.reshape(k, len(x), *out.shape[1:])


@torch.no_grad()
def published_outputs(model, components, masks, x) -> torch.Tensor:
    """The published procedure: one deep copy with zeroed weight rows per mask."""
    return torch.stack([ablate_weights_(copy.deepcopy(model), components, m)(x) for m in masks])


def check_exact(model, components, x, alpha, k=3, seed=0):
    masks = random_masks(k, len(components), alpha, seed)
    assert masks.any(1).all(), "every mask must ablate something for the test to mean anything"
    got = batched_outputs(model, components, masks, x)
    want = published_outputs(model, components, masks, x)
    unablated = model(x)
    assert relative_error(got, want) < 1e-5
    assert relative_error(want, unablated.expand_as(want)) > 1e-3, "ablations must change the output"


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return randomize_batchnorm_(torchvision.models.resnet18(num_classes=10)).eval()


@pytest.fixture(scope="module")
def vit_b_16():
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16().eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises the classifier
    return model


@pytest.mark.parametrize("alpha", [0.05, 0.5])
def test_resnet18_conv_filters_batched_equals_zeroed_weight_copies(resnet18, alpha):
    components = discover(resnet18, kinds=["conv"])
    assert len(components) == 4800  # every Conv2d output channel of resnet18, downsample included
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    check_exact(resnet18, components, x, alpha)


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.05, 0.5])
def test_vit_b_16_neurons_heads_and_qkv_rows_batched_equal_zeroed_weight_copies(vit_b_16, alpha):
    components = discover(vit_b_16, kinds="all", include=["encoder.*"])
    kinds = {g.kind for g in components.groups}
    assert kinds == {"linear", "head", "qkv"}
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    check_exact(vit_b_16, components, x, alpha)


@pytest.mark.parametrize("kinds", [["conv", "linear", "head"], "weight_rows"])
@pytest.mark.parametrize("alpha", [0.05, 0.5])
def test_own_model_with_conv_linear_and_sequence_first_attention_is_exact(kinds, alpha):
    torch.manual_seed(0)
    model = randomize_batchnorm_(ConvAttentionNet()).eval()
    components = discover(model, kinds=kinds)
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    check_exact(model, components, x, alpha, k=4, seed=3)


def test_zero_mode_sets_outputs_to_zero_and_mean_mode_to_reference_means():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).eval()
    components = discover(model, include=["0"])
    ref = torch.randn(50, 6)
    x = torch.randn(2, 6)
    masks = torch.tensor([[True, False, False, False, True]])
    hidden = model[0](x)
    for mode, value in [("zero", torch.zeros(5)), ("mean", model[0](ref).mean(0).detach())]:
        expected_hidden = torch.where(masks[0], value, hidden)
        want = model[2](model[1](expected_hidden))
        got = batched_outputs(model, components, masks, x, mode=mode, reference_inputs=ref)[0]
        assert relative_error(got, want) < 1e-6


def test_mean_mode_averages_conv_units_over_examples_and_positions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3)).eval()
    ref = torch.randn(7, 2, 5, 5)
    (fill,) = unit_fills(model, discover(model), "mean", ref)
    assert torch.allclose(fill, model(ref).mean(dim=(0, 2, 3)), atol=1e-6)


def test_hooks_are_removed_after_the_context_exits():
    model = randomize_batchnorm_(ConvAttentionNet()).eval()
    components = discover(model)
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    with ablate(model, components, torch.ones(1, len(components), dtype=torch.bool)):
        assert not torch.allclose(model(x), before)
    assert torch.equal(model(x), before)
    assert all(not m._forward_hooks for m in model.modules())
    assert "forward" not in model.attn.__dict__


def test_hooks_are_removed_after_an_exception_inside_the_context():
    model = randomize_batchnorm_(ConvAttentionNet()).eval()
    components = discover(model)
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    with pytest.raises(ZeroDivisionError):
        with ablate(model, components, torch.ones(1, len(components), dtype=torch.bool)):
            1 / 0
    assert torch.equal(model(x), before)
    assert all(not m._forward_hooks for m in model.modules())
    assert "forward" not in model.attn.__dict__


def test_unreached_modules_are_reported_instead_of_silently_unablated():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)).eval()
    components = discover(model)
    with ablate(model, components, torch.ones(1, len(components), dtype=torch.bool)) as ablation:
        model[0](torch.randn(1, 3))  # skips model[1]
        with pytest.raises(RuntimeError, match="never reached"):
            ablation.check_reached()


def test_masks_of_the_wrong_width_are_refused():
    model = nn.Sequential(nn.Linear(3, 4)).eval()
    with pytest.raises(ValueError, match=r"masks must be a \(k, 4\) bool"):
        Ablation(model, discover(model), torch.zeros(2, 5, dtype=torch.bool))


def test_components_of_another_model_are_refused():
    components = discover(nn.Sequential(nn.Linear(3, 4)))
    with pytest.raises(ValueError, match="made for another model"):
        Ablation(nn.Sequential(nn.Identity(), nn.Linear(3, 4)), components)


def test_run_masked_matches_one_mask_at_a_time_for_any_pass_size():
    torch.manual_seed(0)
    model = randomize_batchnorm_(ConvAttentionNet()).eval()
    components = discover(model)
    x, y = torch.randn(7, 3, 8, 8), torch.randint(0, 5, (7,))
    masks = random_masks(10, len(components), 0.1, 4)

    def chosen_logit(out, labels):
        return out.gather(1, labels[:, None])[:, 0]

    want = np.stack([chosen_logit(published_outputs(model, components, m[None], x)[0], y).numpy() for m in masks])
    for masks_per_pass, max_batch in [(1, 1000), (3, 6), (4, 1000), (16, 1000)]:
        got = run_masked(model, components, masks, x, y, chosen_logit, masks_per_pass=masks_per_pass, max_batch=max_batch)
        assert got.shape == (10, 7)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_run_masked_refuses_a_model_in_training_mode():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="eval mode"):
        run_masked(model, discover(model), np.zeros((1, 2), bool), torch.randn(2, 3), torch.zeros(2), lambda o, y: o[:, 0])
