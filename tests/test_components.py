"""Component discovery: kinds, name patterns, a stable index, save/load and a fingerprint."""

import pytest
import torchvision
from torch import nn

from coar.components import ComponentSet, discover
from tests.models import ConvAttentionNet


def test_discovers_conv_filters_linear_neurons_and_heads_in_module_order():
    components = discover(ConvAttentionNet())
    assert [(g.module, g.kind, g.size) for g in components.groups] == [
        ("conv1", "conv", 8),
        ("conv2", "conv", 16),
        ("embed", "linear", 24),
        ("attn", "head", 4),
        ("attn.out_proj", "linear", 24),
        ("mlp.0", "linear", 32),
        ("mlp.2", "linear", 24),
        ("head", "linear", 5),
    ]
    assert len(components) == 8 + 16 + 24 + 4 + 24 + 32 + 24 + 5


def test_weight_rows_preset_counts_every_weight_row():
    components = discover(ConvAttentionNet(), kinds="weight_rows")
    assert {g.kind for g in components.groups} == {"conv", "linear", "qkv"}
    assert len(components) == 8 + 16 + 24 + 3 * 24 + 24 + 32 + 24 + 5


def test_vit_b_16_encoder_weight_rows_match_the_published_count():
    components = discover(torchvision.models.vit_b_16(), kinds="weight_rows", include=["encoder.*"])
    assert len(components) == 82_944


def test_include_and_exclude_patterns_select_modules():
    model = torchvision.models.resnet18()
    all_convs = discover(model, kinds=["conv"])
    no_downsample = discover(model, kinds=["conv"], exclude=["*downsample*"])
    layer1 = discover(model, kinds=["conv"], include=["layer1.*"])
    assert len(all_convs) - len(no_downsample) == 128 + 256 + 512
    assert {g.module for g in layer1.groups} == {"layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"}


def test_global_index_round_trips_through_locate():
    components = discover(ConvAttentionNet())
    for i in [0, 7, 8, 50, len(components) - 1]:
        assert components.index(*components.locate(i)) == i
    assert components.locate(8) == ("conv2", 0, "conv")
    assert components.table()[8] == ("conv2", 0, "conv")
    with pytest.raises(IndexError):
        components.locate(len(components))


def test_save_and_load_keep_groups_and_fingerprint(tmp_path):
    components = discover(ConvAttentionNet())
    components.save(tmp_path / "c.json")
    loaded = ComponentSet.load(tmp_path / "c.json")
    assert loaded == components and loaded.fingerprint == components.fingerprint


def test_fingerprint_changes_with_the_component_list():
    model = ConvAttentionNet()
    assert discover(model).fingerprint != discover(model, exclude=["head"]).fingerprint


def test_corrupt_saved_list_is_refused(tmp_path):
    path = tmp_path / "c.json"
    discover(ConvAttentionNet()).save(path)
    path.write_text(path.read_text().replace('"size": 8', '"size": 9', 1))
    with pytest.raises(ValueError):
        ComponentSet.load(path)


def test_unknown_kind_and_empty_selection_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown component kind"):
        discover(ConvAttentionNet(), kinds=["filters"])
    with pytest.raises(ValueError, match="no components"):
        discover(nn.Sequential(nn.ReLU()))


def test_an_adapter_registered_for_a_predicate_applies_to_the_modules_it_matches():
    from coar.adapters import OutputChannelsAdapter, _REGISTRY, adapter_for, register_adapter

    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    wide = OutputChannelsAdapter("conv", -1)  # any adapter: the test is which modules get it
    register_adapter(lambda m: isinstance(m, nn.Linear) and m.out_features == 4, wide)
    try:
        assert adapter_for(model[0]) is wide and adapter_for(model[1]) is not wide
        assert [(g.module, g.kind) for g in discover(model, ["conv", "linear"]).groups] == [("0", "conv"), ("1", "linear")]
    finally:
        _REGISTRY.pop(0)
