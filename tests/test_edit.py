"""COAR-Edit: scoring and choosing components, permanent edits that load without coar, k chosen
without the test split, and every editing task end to end on a tiny configuration."""

import copy
import dataclasses
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from coar.components import discover
from coar.edit import (apply_edit, choose_k, load_ablated, plan_edit, prefix_masks, rank, save_edit,
                       welch_scores)
from coar.edit.tasks import TASKS, run_task
from coar.edit.tasks.common import EditSetup, Examples, attribute, group_accuracy, run_setup
from coar.edit.tasks.seeds import across_seeds, run_seeds, seeds_table
from coar.tasks.params import with_defaults
from coar.forward import run_masked
from coar.outputs import margin
from coar.tasks import digits
from tests.models import ConvAttentionNet, randomize_batchnorm_

REPO = Path(__file__).resolve().parents[1]


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
    pool = Examples(torch.cat([triggered, clean]), torch.cat([labels, labels]),
                    [f"{i}|{v}" for v in ("t", "c") for i in range(60)], np.repeat([1, 0], 60))
    w = attribute(model, components, pool, masks=200, alpha=0.2, seed=0, method="ols")
    plan = plan_edit(model, components, w[:30], w[60:90], "fix", (pool.x, pool.y),
                     lambda m: {"target": group_accuracy(m, pool.group, 1), "reference": group_accuracy(m, pool.group, 0)},
                     range(5), tolerance=0.0, goal=1.0)
    assert components.locate(int(plan.order[0])) == ("conv", PLANTED, "conv")
    assert plan.choice.k == 1 and plan.curves["target"][0] == 0 and plan.curves["target"][1] == 1


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


PLAIN_LOAD = r"""
import importlib.abc, importlib.util, sys
class NoCoar(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "coar" or name.startswith("coar."):
            raise ImportError("coar must not be needed to load an edited model")
sys.meta_path.insert(0, NoCoar())
import torch
spec = importlib.util.spec_from_file_location("plain_model", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
model = module.DigitsResNet(width=float(sys.argv[2]))
model.load_state_dict(torch.load(sys.argv[3], weights_only=True))  # strict: every key must match
model.eval()
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[4], weights_only=True)), sys.argv[5])
assert not any(m == "coar" or m.startswith("coar.") for m in sys.modules)
"""


def test_saved_edited_weights_load_into_the_plain_model_class_in_a_fresh_process_without_coar(tmp_path):
    model = _small_digits_model()
    components = discover(model, "weight_rows")
    ablated = [2, 17, 40]
    edited = apply_edit(model, components, ablated)
    weights, listing = save_edit(tmp_path / "edit", edited, components, ablated)
    # The model class is plain torch: copy its source (not coar's module) into a standalone file.
    source = "import torch\nimport torch.nn.functional as F\nfrom torch import nn\n\n" + "\n\n".join(
        inspect.getsource(c) for c in (digits.ResidualBlock, digits.DigitsResNet))
    (tmp_path / "plain_model.py").write_text(source)
    x = torch.randn(12, 1, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    result = subprocess.run([sys.executable, "-I", "-c", PLAIN_LOAD, str(tmp_path / "plain_model.py"), "0.25", str(weights),
                             str(tmp_path / "x.pt"), str(tmp_path / "y.pt")], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "y.pt"), edited(x))
    assert load_ablated(listing) == [components.locate(i) for i in ablated]
    assert json.loads(listing.read_text())["by_layer"] == {"stem.0": 1, "blocks.0.conv1": 1, "blocks.0.shortcut.0": 1}


# --- k is chosen without the test split --------------------------------------------------------

TINY = {
    "fix_errors": {"epochs": 1, "max_errors": 3, "n_reference": 10},
    "forget_class": {"epochs": 2, "n_target": 8, "n_reference_per_class": 2},
    "subpopulation": {"epochs": 2, "n_per_group": 6},
    "backdoor": {"epochs": 2, "n_target": 8, "poison": 0.1},
    "typographic": {"epochs": 2, "n_target": 8},
}
TINY_COMMON = {"width": 0.25, "masks": 150, "alpha": 0.05, "k_max": 6}  # 88 filters (+ 10 or 2 head neurons)


def _tiny(task: str) -> dict:
    return {**TINY_COMMON, **TINY[task]}


def test_the_test_split_cannot_change_the_chosen_edit(tmp_path):
    module = TASKS["backdoor"]
    p = with_defaults(_tiny("backdoor"), module.DEFAULTS, "backdoor")
    setup = module.build(p)
    assert not {f.name for f in dataclasses.fields(setup.problems[0])} & {"test"}
    assert "test" not in inspect.signature(plan_edit).parameters
    run = dict(masks=p["masks"], alpha=p["alpha"], seed=p["seed"], method=p["method"], k_max=p["k_max"])
    first = run_setup(setup, **run)[0]
    g = torch.Generator().manual_seed(5)
    shuffled = setup.test.y[torch.randperm(len(setup.test), generator=g)]
    scrambled = Examples(torch.randn(setup.test.x.shape, generator=g) * 5, shuffled, setup.test.ids, setup.test.group)
    second = run_setup(dataclasses.replace(setup, test=scrambled), **run)[0]
    assert first.plan.order.tolist() == second.plan.order.tolist()
    assert (first.record["k"], first.record["validation"]) == (second.record["k"], second.record["validation"])
    assert first.record["test"] != second.record["test"]


def test_a_setup_refuses_a_test_set_that_shares_images_with_the_edit_data():
    module = TASKS["backdoor"]
    setup = module.build(with_defaults(_tiny("backdoor"), module.DEFAULTS, "backdoor"))
    leaky = Examples.concat([setup.test, setup.problems[0].validation.take(np.arange(3))])
    with pytest.raises(ValueError, match="test images also appear"):
        EditSetup(setup.model, setup.components, setup.problems, leaky)


# --- every task end to end ---------------------------------------------------------------------

@pytest.mark.parametrize("task", sorted(TASKS))
def test_each_task_runs_end_to_end_on_a_tiny_config(task, tmp_path):
    report = run_task(task, _tiny(task), tmp_path)
    assert json.loads((tmp_path / "report.json").read_text())["task"] == task
    assert report["targets"] and all(isinstance(t["met"], bool) for t in report["targets"].values())
    assert (tmp_path / "plots" / "metric_vs_k.png").stat().st_size > 1000
    for edit in report["edits"]:
        assert 0 <= edit["k"] <= 6 and sum(edit["by_layer"].values()) == edit["k"]
        assert set(edit["test"]) >= {"target", "reference"} and len(edit["curves"]["k"]) == 7
        listing = json.loads((tmp_path / Path(edit["weights"]).parent / "ablated.json").read_text())
        assert len(listing["ablated"]) == edit["k"]
        plain = digits.DigitsResNet(**report["model"]["kwargs"])
        plain.load_state_dict(torch.load(tmp_path / edit["weights"], weights_only=True))


def test_the_edit_demos_target_runs_a_task_through_snakemake_and_the_cli(tmp_path):
    config = {"run": "tiny", "edit": {"tasks": ["forget_class"], "forget_class": _tiny("forget_class")}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = ["snakemake", "edit_demos", "--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "2", "--configfile", str(tmp_path / "config.yaml")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "results" / "tiny" / "edits" / "forget_class" / "report.json").read_text())
    assert report["params"]["n_target"] == 8 and report["params"]["width"] == 0.25


# --- several seeds: mean and spread ------------------------------------------------------------

def _report(seed: int, gain: float, k: int) -> dict:
    return {"params": {"seed": seed, "width": 1.0}, "results": {"k": k},
            "targets": {"gain": {"value": gain, "comparison": ">=", "threshold": 30.0, "met": gain >= 30.0},
                        "drop": {"value": 0.5, "comparison": "<=", "threshold": 1.0, "met": True}}}


def test_targets_over_seeds_are_judged_on_the_mean_with_the_sample_spread():
    summary = across_seeds("backdoor", [_report(0, 10.0, 3), _report(1, 20.0, 4), _report(2, 60.0, 5)])
    gain = summary["targets"]["gain"]
    assert gain["values"] == [10.0, 20.0, 60.0] and gain["met_per_seed"] == [False, False, True]
    assert gain["mean"] == pytest.approx(30.0) and gain["met"]  # one seed of three meets it, the mean does
    assert gain["std"] == pytest.approx(np.std([10.0, 20.0, 60.0], ddof=1))
    assert (gain["min"], gain["max"]) == (10.0, 60.0)
    assert summary["seeds"] == [0, 1, 2] and summary["k"] == [3, 4, 5] and summary["all_targets_met_on_mean"]
    assert summary["params"] == {"width": 1.0}
    assert "| gain | 10 | 20 | 60 | 30 ± 26 | >= 30 | yes |" in seeds_table(summary)
    with pytest.raises(ValueError, match="repeat a seed"):
        across_seeds("backdoor", [_report(0, 10.0, 3), _report(0, 20.0, 4)])


def test_a_task_over_seeds_writes_each_seeds_report_and_their_summary(tmp_path):
    summary = run_seeds("forget_class", _tiny("forget_class"), [0, 1], tmp_path)
    reports = [json.loads((tmp_path / f"seed-{s}" / "report.json").read_text()) for s in (0, 1)]
    assert [r["params"]["seed"] for r in reports] == [0, 1]
    assert json.loads((tmp_path / "seeds.json").read_text()) == json.loads(json.dumps(summary))
    for name, t in summary["targets"].items():
        assert t["values"] == [r["targets"][name]["value"] for r in reports]
    assert "| forget_class target | seed 0 | seed 1 |" in (tmp_path / "seeds.md").read_text()
    with pytest.raises(ValueError, match="use one of them"):
        run_seeds("forget_class", {**_tiny("forget_class"), "seed": 3}, [0, 1], tmp_path)


def test_the_edit_demos_target_runs_the_seeds_of_config_edit_seeds(tmp_path):
    config = {"run": "tiny", "edit": {"tasks": ["forget_class"], "seeds": [2, 3], "forget_class": _tiny("forget_class")}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = ["snakemake", "edit_demos", "--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "2", "--configfile", str(tmp_path / "config.yaml")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "results" / "tiny" / "edits" / "forget_class" / "seeds.json").read_text())
    assert summary["seeds"] == [2, 3]
    assert (tmp_path / "results" / "tiny" / "edits" / "forget_class" / "seed-3" / "report.json").exists()
