"""The fast path (BatchNorm folding, channels_last, torch.compile) gives the plain model's ablated outputs."""

import numpy as np
import pytest
import torch
from torch import nn

from coar.ablation import unit_fills
from coar.components import discover
from coar.fastpath import FastPath, prepare
from coar.forward import run_masked
from coar.masks import sample_masks
from coar.outputs import margin
from coar.tasks.digits import DigitsResNet

from tests.models import ConvAttentionNet, randomize_batchnorm_


class SharedOutput(nn.Module):
    """conv1's output feeds a BN and the residual: folding it would change the residual."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        a = self.conv1(x)
        b = self.bn2(self.conv2(torch.relu(self.bn1(a))))
        return self.head((a + b).mean(dim=(2, 3)))


def case(name):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "digits":
        model, x, kinds = DigitsResNet(), torch.randn(12, 1, 8, 8, generator=g), ("conv",)
    elif name == "shared":
        model, x, kinds = SharedOutput(), torch.randn(12, 3, 6, 6, generator=g), ("conv", "linear")
    else:
        model, x, kinds = ConvAttentionNet(), torch.randn(12, 3, 6, 6, generator=g), "all"
    model = randomize_batchnorm_(model).eval()
    y = torch.randint(0, 4, (12,), generator=g)
    return model, discover(model, kinds), x, y


@pytest.mark.parametrize("mode", ["weight", "zero", "mean"])
@pytest.mark.parametrize("name", ["digits", "shared", "attention"])
def test_folded_channels_last_model_gives_the_original_ablated_outputs(name, mode):
    model, components, x, y = case(name)
    masks = sample_masks(0, 0, 10, len(components), 0.1)
    fills = unit_fills(model, components, mode, reference_inputs=x)
    expected = run_masked(model, components, masks, x, y, margin, masks_per_pass=4, fills=fills)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = prepare(model, components, fills, FastPath())
    got = run_masked(fast.model, components, masks, x, y, margin, masks_per_pass=4, fills=fast.fills)
    assert np.abs(expected - run_masked(model, components, masks[:0 + 1], x, y, margin)[0]).max() > 1e-3, "masks must matter"
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the user's model is left as it was"


def test_folds_every_conv_whose_only_use_is_a_batchnorm_and_no_other():
    assert prepare(*case("digits")[:2], unit_fills(*case("digits")[:2]), FastPath()).folded == [
        "blocks.0.conv1", "blocks.0.conv2", "blocks.0.shortcut.0", "blocks.1.conv1", "blocks.1.conv2", "stem.0"]
    model, components = case("shared")[:2]
    assert prepare(model, components, unit_fills(model, components), FastPath()).folded == ["conv2"]


def test_folding_maps_the_fill_of_an_ablated_filter_through_its_batchnorm():
    model, components = case("shared")[:2]
    fills = unit_fills(model, components)
    fast = prepare(model, components, fills, FastPath(channels_last=False))
    i = [g.module for g in components.groups].index("conv2")
    bn = model.bn2
    expected = (fills[i] - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(fast.fills[i], expected.detach())
    torch.testing.assert_close(fast.fills[i], fast.model.conv2.bias.detach())  # = its bias once its weights are zeroed


@pytest.mark.slow
def test_compiled_fast_path_keeps_the_mask_op_in_one_graph_and_does_not_recompile_per_mask_block():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, components, x, y = case("shared")
    masks = sample_masks(0, 0, 24, len(components), 0.1)
    fills = unit_fills(model, components)
    expected = run_masked(model, components, masks, x, y, margin, masks_per_pass=4, fills=fills)
    fast = prepare(model, components, fills, FastPath(compile=True))
    first = run_masked(fast.model, components, masks[:12], x, y, margin, masks_per_pass=4, fills=fast.fills)
    graphs = counters["stats"]["unique_graphs"]
    second = run_masked(fast.model, components, masks[12:], x, y, margin, masks_per_pass=4, fills=fast.fills)
    np.testing.assert_allclose(np.concatenate([first, second]), expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    # three mask blocks of one shape: at most one graph, one for the first pass's caches, and two
    # for the layout probe every run_masked call starts with (2 and 3 rows)
    assert 1 <= graphs <= 4, graphs
    assert counters["stats"]["unique_graphs"] == graphs, "three more mask blocks must not compile anything"
    assert not counters["graph_break"], f"graph breaks: {dict(counters['graph_break'])}"
