"""`precision`: autocast around the ablated passes, fills in the activation's dtype, float32 outputs."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from coar import precision as precision_mod
from coar.ablation import Ablation, unit_fills
from coar.components import discover
from coar.forward import run_masked
from coar.masks import sample_masks
from coar.outputs import margin
from coar.precision import autocast, check_precision

from tests.models import randomize_batchnorm_


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    return randomize_batchnorm_(net).eval()


def units_equal_to_fill(model, components, masks, x, precision):
    """Per mask row and conv: which units hold their fill everywhere, and the conv outputs' dtype."""
    fills = unit_fills(model, components)
    seen = {}

    def record(name):
        def hook(_m, _i, out):
            seen[name] = out.clone()
        return hook

    with Ablation(model, components, masks, fills=fills):
        handles = [model.get_submodule(g.module).register_forward_hook(record(g.module)) for g in components.groups]
        with torch.inference_mode(), autocast(precision, "cpu"):
            model(x.repeat(len(masks), 1, 1, 1))
        for h in handles:
            h.remove()
    result = {}
    for g, fill in zip(components.groups, fills):
        out = seen[g.module]
        k_rows = out.reshape(len(masks), len(x), *out.shape[1:])
        target = fill.to(out.dtype)[None, None, :, None, None]
        result[g.module] = ((k_rows == target).flatten(3).all(-1).all(1), out.dtype)
    return result


@pytest.mark.parametrize("low", ["bf16", "fp16"])
def test_masks_land_on_the_same_units_with_fills_in_the_activation_dtype(low):
    model = conv_net()
    components = discover(model, kinds=("conv",))
    masks = torch.from_numpy(sample_masks(0, 0, 3, len(components), 0.3))
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    full = units_equal_to_fill(model, components, masks, x, "fp32")
    half = units_equal_to_fill(model, components, masks, x, low)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[low]
    for g in components.groups:
        (full_units, full_dtype), (half_units, half_dtype) = full[g.module], half[g.module]
        assert full_dtype == torch.float32 and half_dtype == dtype
        expected = masks[:, g.start : g.stop]
        assert expected.any(), "the check needs ablated units"
        assert torch.equal(full_units, expected) and torch.equal(half_units, expected)


def test_run_masked_in_bf16_is_close_to_fp32_returns_float32_and_really_ran_in_bf16():
    model = conv_net()
    components = discover(model, kinds=("conv",))
    masks = sample_masks(0, 0, 8, len(components), 0.2)
    x = torch.randn(10, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 4, (10,), generator=torch.Generator().manual_seed(3))
    fp32 = run_masked(model, components, masks, x, y, margin, masks_per_pass=3)
    bf16 = run_masked(model, components, masks, x, y, margin, masks_per_pass=3, precision="bf16")
    assert bf16.dtype == np.float32
    assert not np.array_equal(fp32, bf16)
    np.testing.assert_allclose(bf16, fp32, atol=0.05 * np.abs(fp32).max())


def test_unknown_precision_is_refused_before_any_pass():
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        check_precision("fp8", "cpu")


def test_precision_that_autocast_cannot_run_is_refused_with_the_cause(monkeypatch):
    monkeypatch.setattr(precision_mod.torch.amp, "is_autocast_available", lambda device_type: False)
    with pytest.raises(ValueError, match="no autocast for device 'cpu'"):
        check_precision("bf16", "cpu")


def test_bf16_and_fp16_are_supported_on_this_cpu():
    check_precision("bf16", "cpu")
    check_precision("fp16", "cpu")


def test_collect_step_with_bf16_writes_float32_outputs_of_the_same_masks(tmp_path):
    import h5py

    from coar import steps
    from coar.fastpath import FastPath

    steps.prepare("tests.tasks_for_tests:task", {"n": 6}, ("linear",), ["*"], [], tmp_path)
    common = dict(task_spec="tests.tasks_for_tests:task", task_params={"n": 6}, shard=0, shards=1, masks=20, alpha=0.2, seed=0, ablation="weight", output_fn=None, masks_per_pass=4,
                  max_batch="auto", device="cpu")
    steps.collect(tmp_path, tmp_path / "fp32.h5", precision="fp32", fast_path=FastPath.none(), **common)
    steps.collect(tmp_path, tmp_path / "bf16.h5", precision="bf16", **common)
    with h5py.File(tmp_path / "fp32.h5") as a, h5py.File(tmp_path / "bf16.h5") as b:
        assert np.array_equal(a["masks"][:], b["masks"][:])
        assert b["outputs"].dtype == np.float32
        fp32, bf16 = a["outputs"][:], b["outputs"][:]
    assert not np.array_equal(fp32, bf16)
    np.testing.assert_allclose(bf16, fp32, atol=0.05 * np.abs(fp32).max())


def test_collect_refuses_an_unsupported_precision_before_loading_anything(tmp_path):
    from coar import steps

    with pytest.raises(ValueError, match="unknown precision"):
        steps.collect(tmp_path, tmp_path / "x.h5", task_spec="tests.tasks_for_tests:task", task_params={}, shard=0, shards=1, masks=2, alpha=0.2, seed=0, ablation="weight",
                      output_fn=None, masks_per_pass=1, max_batch=8, device="cpu", precision="fp8")


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_bf16_instructions_is_run_with_a_warning_that_fp32_is_faster(native, monkeypatch):
    for probe in precision_mod.CPU_INSTRUCTIONS["bf16"].values():
        monkeypatch.setattr(torch.cpu, probe, lambda: native, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_precision("bf16", "cpu")
    warned = [str(w.message) for w in caught if "precision bf16" in str(w.message)]
    if native:
        assert warned == []
    else:
        assert len(warned) == 1 and "avx512_bf16 or amx_tile" in warned[0] and "fp32 is faster" in warned[0]
