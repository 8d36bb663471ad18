"""coar.attribute: the workflow in one call, on tensors, a Dataset or a DataLoader."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import coar
from coar.api import resolve_components
from coar.solver.surrogate import ProjectedQuadratic
from tests.models import ConvAttentionNet, randomize_batchnorm_

REPO = Path(__file__).resolve().parents[1]


def linear_classifier() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 2)).eval()
    return model, torch.randn(5, 6), torch.randint(0, 2, (5,))


def test_importing_coar_does_not_import_torch():
    code = "import sys, coar; assert 'torch' not in sys.modules, 'torch imported'; print(coar.__version__)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


def test_an_output_linear_in_the_masks_is_attributed_exactly():
    # margin = logit[y] - logit[other]; ablating unit c sets logit c to its bias, so the true effect
    # of ablating c on example z is known and the output is linear in the masks: OLS recovers it.
    model, x, y = linear_classifier()
    result = coar.attribute(model, (x, y), components="linear", masks=40, alpha=0.3, heldout_masks=20,
                            device="cpu", progress=False)
    with torch.no_grad():
        logits = model(x)
        bias = model[1].bias.detach()
    sign = torch.where(torch.arange(2) == y[:, None], 1.0, -1.0)  # +1 for the label's logit
    expected = (sign * (bias - logits)).numpy()
    np.testing.assert_allclose(result.weight, expected, atol=1e-4)
    np.testing.assert_allclose(result.bias, (sign * logits).sum(1).numpy(), atol=1e-4)
    assert result.info["mean_heldout_correlation"] > 0.999
    assert result.info["heldout"]["n_masks"] == 20 and result.info["n_masks"] == 40


def test_tensors_a_dataset_and_a_dataloader_give_the_same_attributions():
    torch.manual_seed(1)
    model = randomize_batchnorm_(ConvAttentionNet()).eval()
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    options = dict(components=["conv1", "conv2"], masks=30, alpha=0.3, method="ridge", device="cpu", progress=False)
    results = [coar.attribute(model, examples, **options)
               for examples in ((x, y), TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True))]
    for other in results[1:]:
        np.testing.assert_allclose(other.weight, results[0].weight, rtol=1e-5, atol=1e-6)
    assert [c.module for c in results[0].components][:8] == ["conv1"] * 8 and len(results[0].components) == 24


@pytest.mark.slow
def test_masks_auto_grows_in_rounds_to_the_fixed_result_of_its_final_size_bit_for_bit():
    torch.manual_seed(1)
    model = randomize_batchnorm_(ConvAttentionNet()).eval()
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    options = dict(components=["conv1", "conv2"], alpha=0.2, heldout_masks=30, device="cpu", progress=False)
    grown = coar.attribute(model, (x, y), masks="auto", masks_auto={"round_masks": 20, "max_masks": 200}, **options)
    rounds = grown.info["rounds"]
    assert [r["masks"] for r in rounds] == list(range(20, 20 * len(rounds) + 1, 20)) and rounds[-1]["stop"]
    assert rounds[0]["mean"] is None  # 20 masks for 24 components: no OLS fit to score yet
    fixed = coar.attribute(model, (x, y), masks=grown.info["n_masks"], **options)
    assert np.array_equal(grown.weight, fixed.weight) and np.array_equal(grown.bias, fixed.bias)
    assert grown.info["mean_heldout_correlation"] == fixed.info["mean_heldout_correlation"]


def test_masks_auto_needs_heldout_masks_and_known_settings():
    model, x, y = linear_classifier()
    with pytest.raises(ValueError, match="masks='auto' scores every round on held-out masks"):
        coar.attribute(model, (x, y), components="linear", masks="auto", device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"unknown masks_auto keys \['min_gian'\]"):
        coar.attribute(model, (x, y), components="linear", masks="auto", heldout_masks=10,
                       masks_auto={"min_gian": 0.01}, device="cpu", progress=False)


def mlp_classifier() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Two ReLU layers: ablating a unit changes what the others contribute, so the outputs are not
    linear in the masks."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    return model, torch.randn(10, 6), torch.randint(0, 3, (10,))


def test_a_surrogate_is_fitted_on_the_training_masks_and_scored_on_the_same_heldout_masks():
    model, x, y = mlp_classifier()
    options = dict(components="linear", masks=300, alpha=0.2, heldout_masks=100, device="cpu", progress=False)
    linear = coar.attribute(model, (x, y), **options)
    result = coar.attribute(model, (x, y), **options, surrogate={"kind": "projected_quadratic", "rank": 3, "penalty": 1})
    # The linear attributions are those of a run without a surrogate, scored the same.
    np.testing.assert_array_equal(result.weight, linear.weight)
    assert result.info["mean_heldout_correlation"] == linear.info["mean_heldout_correlation"]
    assert linear.surrogate is None and "heldout_surrogate" not in linear.info
    assert isinstance(result.surrogate, ProjectedQuadratic) and result.surrogate.n_masks_ == 300
    assert result.info["surrogate"] == {"kind": "projected_quadratic", "rank": 3, "penalty": 1, "basis_method": "ols",
                                        "n_masks": 300}
    scored = result.info["heldout_surrogate"]
    assert scored["n_masks"] == 100 and scored["mean_correlation"] == result.info["mean_heldout_correlation_surrogate"]
    # The interactions of the ReLUs are what the surrogate adds (0.87 -> 0.90 here).
    assert result.info["mean_heldout_correlation_surrogate"] > result.info["mean_heldout_correlation"] + 0.02
    assert result.surrogate.predict(np.zeros((2, len(result.component_set)))).shape == (2, 10)


def test_a_surrogate_of_unknown_kind_or_settings_is_refused_before_any_pass(monkeypatch):
    model, x, y = mlp_classifier()
    monkeypatch.setattr("coar.forward.run_masked", lambda *args, **kwargs: pytest.fail("a pass ran before the refusal"))
    for surrogate, message in (("cubic", "surrogate kind must be one of"),
                               ({"kind": "projected_quadratic", "order": 2}, "surrogate must be a kind"),
                               ({"kind": "projected_quadratic", "rank": 11},  # 10 examples
                                re.escape("rank 11 exceeds min(components, examples) = min(27, 10)"))):
        with pytest.raises(ValueError, match=message):
            coar.attribute(model, (x, y), components="linear", masks=300, device="cpu", progress=False,
                           surrogate=surrogate)
    # 28 masks are enough for OLS on 27 components, not for the surrogate's linear part and bias.
    with pytest.raises(ValueError, match="28 masks cannot determine .* at least 29"):
        coar.attribute(model, (x, y), components="linear", masks=28, device="cpu", progress=False,
                       surrogate={"kind": "projected_quadratic", "rank": 2})


def test_components_may_be_kinds_presets_patterns_or_a_config_block():
    model = ConvAttentionNet().eval()
    assert {g.kind for g in resolve_components(model, "conv").groups} == {"conv"}
    assert {g.kind for g in resolve_components(model, ["conv", "head"]).groups} == {"conv", "head"}
    assert [g.module for g in resolve_components(model, ["mlp.*"]).groups] == ["mlp.0", "mlp.2"]
    block = {"kinds": ["linear"], "include": ["*"], "exclude": ["head", "mlp.*"]}
    assert [g.module for g in resolve_components(model, block).groups] == ["embed", "attn.out_proj"]


def test_too_few_masks_for_ols_are_refused_before_any_pass():
    model, x, y = linear_classifier()
    with pytest.raises(ValueError, match="needs more masks than components"):
        coar.attribute(model, (x, y), components="linear", masks=2, device="cpu", progress=False)


def test_examples_of_an_unknown_type_are_refused_naming_the_accepted_ones():
    model, x, _ = linear_classifier()
    with pytest.raises(TypeError, match="tuple .* Dataset or a DataLoader"):
        coar.attribute(model, x, components="linear", device="cpu", progress=False)


def python_blocks(path: Path) -> list[str]:
    """The ```python code blocks of a Markdown file, in order."""
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_the_python_api_page_runs_as_written(tiny_run, monkeypatch, capsys):
    monkeypatch.chdir(tiny_run)  # the page's run folder, results/tiny, is the tiny test run's
    namespace: dict = {}
    for block in python_blocks(REPO / "docs" / "python-api.md"):
        exec(compile(block, "docs/python-api.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "held-out correlation:" in out and "layer4.1.conv2[" in out
    assert namespace["run"].info["run"] == "tiny" and len(namespace["frame"]) == namespace["run"].weight.size
    weights = load_file(tiny_run / "results" / "tiny" / "weights.safetensors")
    state = namespace["model"].state_dict()
    assert state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in weights)
    assert "predicted vs realised on 20 masks:" in out and "['forget_3']" in out
