"""The editing steps over a run's own files: plan from attributions.h5, apply on validation
examples, and every bad input refused naming the edit and the key."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from coar import steps
from coar.cli import main
from coar.edit import steps as edit_steps
from coar.edit.spec import EditConfigError, EditSpec
from coar.h5format import FormatError
from coar.outputs import margin
from coar.task import Task
from tests.tasks_for_tests import TinyNet

SPEC = "tests.test_edit_steps:task"
TASK = (SPEC, {"seed": 0})
"""The config's task (spec, params) of the run fixture: later steps reopen the config's task."""
EDIT = {"name": "lower_0", "target": {"label": 0}, "reference": {"rest": True}, "direction": "lower", "k": "auto",
        "k_max": 6, "tolerance": 0.5, "max_deviation": 10.0}


def task(params: dict) -> Task:
    """A TinyNet with 30 examples and 24 validation examples of 3 classes, two groups of each."""
    generator = torch.Generator().manual_seed(params.get("seed", 0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = TinyNet()
    return Task(model=model, inputs=torch.randn(30, 4, generator=generator), labels=torch.arange(30) % 3,
                groups=["even", "odd"] * 15, validation_inputs=torch.randn(24, 4, generator=generator),
                validation_labels=torch.arange(24) % 3, validation_groups=["even", "odd"] * 12,
                reference_inputs=torch.randn(8, 4, generator=generator))


def attributed_run(run: Path, seed: int = 0) -> Path:
    """Prepare, collect, merge and fit a run of `task` (11 linear components, 60 masks, OLS)."""
    steps.prepare(SPEC, {"seed": seed}, "linear", ["*"], [], run)
    assert main(["collect", "--run-dir", str(run), "--out", str(run / "shard.h5"), "--masks", "60", "--alpha", "0.2",
                 "--task", SPEC, "--task-params", json.dumps({"seed": seed}),
                 "--device", "cpu"]) == 0
    assert main(["merge", "--run-dir", str(run), "--masks", "60", "--out", str(run / "dataset.h5"),
                 str(run / "shard.h5")]) == 0
    assert main(["fit", "--run-dir", str(run), "--data", str(run / "dataset.h5"), "--out",
                 str(run / "attributions.h5")]) == 0
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return attributed_run(tmp_path_factory.mktemp("run"))


def plan(run: Path, out: Path, **changes) -> dict:
    return edit_steps.plan(run, EditSpec.from_config({**EDIT, **changes}), run / "attributions.h5", out, task=TASK)


def test_the_plan_ranks_allowed_components_and_predicts_the_change_for_every_k(run, tmp_path):
    result = plan(run, tmp_path / "plan.json", components=["layers.0"])
    assert result["ks"] == list(range(7)) and result["n_candidates"] == 8
    assert all(r["module"] == "layers.0" for r in result["ranked"])
    scores = [r["score"] for r in result["ranked"]]
    assert scores == sorted(scores)  # lower: most negative first
    assert result["target"]["n"] == 10 and result["reference"]["n"] == 20
    assert result["predicted_mean_change"]["target"][0] == 0
    assert json.loads((tmp_path / "plan.json").read_text()) == result


@pytest.mark.parametrize("selection", ["prefix", "verified"])
def test_apply_writes_weights_that_equal_ablating_the_listed_components_by_hand(run, tmp_path, selection):
    spec = EditSpec.from_config({**EDIT, "k": 3, "selection": selection})
    edit_steps.plan(run, spec, run / "attributions.h5", tmp_path / "plan.json", task=TASK)
    report = edit_steps.apply(run, spec, tmp_path / "plan.json", run / "attributions.h5", tmp_path, task=TASK)
    # the prefix ablates the k given; the verified selection at most k, those that held on validation
    assert report["k"] == 3 if selection == "prefix" else 0 < report["k"] <= 3
    ablated = json.loads((tmp_path / "ablated.json").read_text())["ablated"]
    model = TinyNet()
    model.load_state_dict(load_file(tmp_path / "weights.safetensors"))
    original = task({}).model
    original.load_state_dict(load_file(run / "weights.safetensors"))
    for row in ablated:
        original.get_submodule(row["module"]).weight.data[row["unit"]] = 0
    for a, b in zip(model.state_dict().values(), original.state_dict().values()):
        assert torch.equal(a, b)
    assert (tmp_path / "metric_vs_k.png").stat().st_size > 0


def test_apply_reports_predicted_and_realised_changes_of_every_example(run, tmp_path):
    spec = EditSpec.from_config({**EDIT, "k": 3, "selection": "prefix"})
    edit_steps.plan(run, spec, run / "attributions.h5", tmp_path / "plan.json", task=TASK)
    report = edit_steps.apply(run, spec, tmp_path / "plan.json", run / "attributions.h5", tmp_path, task=TASK)
    examples = report["predicted_vs_realised"]["examples"]
    assert len(examples) == 30 and {e["role"] for e in examples} == {"target", "reference"}
    sweep = report["sweep"]
    assert len(sweep["validation_target_success"]) == len(sweep["ks"]) == 4
    assert report["metrics"]["validation_target"]["n"] == 8 and report["metrics"]["target"]["n"] == 10
    realised = np.array([e["realised"] for e in examples])
    before, after = report["metrics"]["reported"]["mean_output"]
    np.testing.assert_allclose(after - before, realised.mean(), atol=1e-5)
    predicted = np.array([e["predicted"] for e in examples])
    np.testing.assert_allclose(report["predicted_vs_realised"]["correlation"], np.corrcoef(predicted, realised)[0, 1])
    # Accuracy as the attributions predict it: the unedited margins plus each example's predicted change.
    made = task(TASK[1])
    with torch.no_grad():
        base = margin(made.model.eval()(made.inputs), made.labels).numpy()
    role = np.array([e["role"] for e in examples])
    accuracies = report["predicted_vs_realised"]["accuracy"]
    for name in ("target", "reference"):
        rows = role == name
        assert accuracies[name]["before"] == report["metrics"][name]["accuracy"][0] == np.mean(base[rows] > 0)
        assert accuracies[name]["realised"] == report["metrics"][name]["accuracy"][1]
        assert accuracies[name]["predicted"] == np.mean(base[rows] + predicted[rows] > 0)


def test_strict_refuses_to_write_the_model_when_the_prediction_is_missed(run, tmp_path):
    spec = EditSpec.from_config({**EDIT, "k": 4, "max_deviation": 0.0, "strict": True, "selection": "prefix"})
    edit_steps.plan(run, spec, run / "attributions.h5", tmp_path / "plan.json", task=TASK)
    with pytest.raises(RuntimeError, match="strict: true.*not written"):
        edit_steps.apply(run, spec, tmp_path / "plan.json", run / "attributions.h5", tmp_path, task=TASK)
    assert not (tmp_path / "weights.safetensors").exists()


@pytest.mark.parametrize("changes, message", [
    ({"target": {"label": 7}}, "key 'target'.*matches none"),
    ({"reference": {"group": "even"}}, "keys 'target' and 'reference'.*selected by both"),
    ({"target": {"group": "blue"}}, "key 'target.group': unknown group 'blue'"),
    ({"k": 12}, "key 'k': 12 is more than the 11 components"),
    ({"components": ["nothing.*"]}, "key 'components'"),
])
def test_bad_selections_are_refused_naming_the_edit_and_the_key(run, tmp_path, changes, message):
    with pytest.raises(EditConfigError, match=f"edit 'lower_0', {message}"):
        plan(run, tmp_path / "plan.json", **changes)
    assert not (tmp_path / "plan.json").exists()


def test_a_run_without_attributions_is_refused_naming_the_edit(tmp_path):
    steps.prepare(SPEC, {}, "linear", ["*"], [], tmp_path)
    with pytest.raises(FileNotFoundError, match="edit 'lower_0'.*no attributions yet"):
        plan(tmp_path, tmp_path / "plan.json")


def test_attributions_of_another_run_are_refused(run, tmp_path):
    other = tmp_path / "other"
    steps.prepare(SPEC, {"seed": 1}, "linear", ["*"], [], other)
    shutil.copy(run / "attributions.h5", other / "attributions.h5")
    with pytest.raises(FormatError, match="edit 'lower_0'.*fingerprint"):
        plan(other, tmp_path / "plan.json")


def test_a_plan_of_another_edit_is_refused(run, tmp_path):
    plan(run, tmp_path / "plan.json")
    with pytest.raises(FormatError, match="planned for another edit"):
        edit_steps.apply(run, EditSpec.from_config({**EDIT, "k": 2}), tmp_path / "plan.json", run / "attributions.h5",
                         tmp_path, task=TASK)


def test_the_command_line_runs_both_steps(run, tmp_path, capsys):
    edit = json.dumps(EDIT)
    assert main(["edit-plan", "--run-dir", str(run), "--edit", edit, "--attributions", str(run / "attributions.h5"),
                 "--task", SPEC, "--task-params", json.dumps(TASK[1]),
                 "--out", str(tmp_path / "plan.json"), "--device", "cpu"]) == 0
    assert main(["edit-apply", "--run-dir", str(run), "--edit", edit, "--attributions", str(run / "attributions.h5"),
                 "--task", SPEC, "--task-params", json.dumps(TASK[1]),
                 "--plan", str(tmp_path / "plan.json"), "--out-dir", str(tmp_path), "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["format"] == edit_steps.REPORT_FORMAT


def test_the_edit_library_does_not_depend_on_demo_or_project_tasks():
    library = Path(__file__).resolve().parents[1] / "coar" / "edit"
    for module in ("spec.py", "selectors.py", "steps.py", "planning.py", "selection.py", "record.py", "plots.py",
                   "__init__.py"):
        imports = re.findall(r"^\s*(?:from|import) (coar\.[\w.]+)", (library / module).read_text(), re.M)
        assert not [name for name in imports if name.startswith("coar.tasks")], module


def test_selectors_combine_ids_groups_and_misclassified_as_an_intersection(tmp_path):
    from coar.edit.selectors import Pool, select

    (tmp_path / "ids.txt").write_text("a\nc\n\nd\n")
    pool = Pool("the examples", ["a", "b", "c", "d"], np.array([0, 0, 1, 0]), {"g": [0, 3]},
                outputs=np.array([-1.0, 2.0, -0.5, 3.0]))
    spec = EditSpec.from_config({**EDIT, "target": {"ids": str(tmp_path / "ids.txt"), "misclassified": True},
                                 "reference": {"misclassified": False, "group": "g"}})
    target, reference = select(spec, pool)
    assert target.tolist() == [0, 2] and reference.tolist() == [3]
    spec = EditSpec.from_config({**EDIT, "target": {"ids": str(tmp_path / "ids.txt"), "label": 0}})
    assert [p.tolist() for p in select(spec, pool)] == [[0, 3], [1, 2]]


@pytest.mark.parametrize("surrogate", [False, True])
def test_show_edit_prints_the_rule_accuracies_with_their_prediction_and_the_ablated_components(run, tmp_path, capsys,
                                                                                             surrogate):
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    if surrogate:
        assert main(["fit-surrogate", "--run-dir", str(copy), "--data", str(copy / "dataset.h5"), "--attributions",
                     str(copy / "attributions.h5"), "--out", str(copy / "surrogate.h5"), "--kind",
                     "projected_quadratic", "--rank", "2"]) == 0
    spec = EditSpec.from_config({**EDIT, "k": 3, "selection": "prefix"})
    out = copy / "edits" / spec.name
    edit_steps.plan(copy, spec, copy / "attributions.h5", out / "plan.json", task=TASK)
    report = edit_steps.apply(copy, spec, out / "plan.json", copy / "attributions.h5", out, task=TASK,
                              surrogate=copy / "surrogate.h5" if surrogate else None)
    capsys.readouterr()
    assert main(["show", str(copy), "--edit", spec.name]) == 0
    shown = capsys.readouterr().out
    assert "k = 3 (k given in the config)" in shown and "ablated (3): " in shown
    target, checks = report["predicted_vs_realised"]["accuracy"]["target"], report["checks"]
    by_surrogate = f", by the surrogate {100 * target['surrogate_predicted']:.1f}%" if surrogate else ""
    assert (f"target (run's examples)      n =    10  accuracy {100 * target['before']:5.1f}% -> "
            f"{100 * target['realised']:5.1f}% (predicted {100 * target['predicted']:.1f}%{by_surrogate})") in shown
    # the change is labelled with what predicted it: the surrogate judged the edit when the run has one
    change = (f"predicted by the surrogate {checks['predicted_target_change']:+.3f} "
              f"(linear {checks['linear_predicted_target_change']:+.3f})" if surrogate else
              f"predicted by the attributions {checks['predicted_target_change']:+.3f}")
    assert f"target change on validation: {change}, realised" in shown
