"""The five editing demos as tasks and configs: each task function builds a Task with the groups
and validation examples its config's edit selects (small and untrained), each config passes the
start-up checks, and the benchmark tabulates reports as mean ± spread over seeds."""

from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from coar.config import SCHEMA, check_config, fill_defaults
from coar.task import load_task
from tests.benchmark_scripts import load_benchmark

REPO = Path(__file__).resolve().parents[1]
DEMOS = REPO / "config" / "edit-demos"
TINY = {"width": 0.25}  # and restore=True: the model is not trained (coar.task.restoring)
NAMES = ("fix_errors", "forget_class", "subpopulation", "backdoor", "typographic")


def demo_config(name: str) -> dict:
    config = yaml.safe_load((DEMOS / f"{name}.yaml").read_text())
    fill_defaults(config, REPO / "config" / "config.yaml")
    return config


def test_there_is_one_config_per_demo():
    assert sorted(p.stem for p in DEMOS.glob("*.yaml")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_each_demo_config_passes_the_start_up_checks_and_runs_no_baselines(name):
    config = demo_config(name)
    validate(config, str(SCHEMA))
    check_config(config)
    assert config["run"] == name and config["evaluation"]["baselines"] == [] and config["edits"]


@pytest.mark.parametrize("name", NAMES)
def test_each_demo_task_gives_the_groups_its_edit_selects_among_attributed_and_validation_examples(name):
    config = demo_config(name)
    task = load_task(config["task"]["spec"], {**config["task"]["params"], **TINY}, restore=True)
    assert task.n_validation > 0 and task.n_examples > 0
    for edit in config["edits"]:
        for selector in (edit["target"], edit["reference"]):
            if "group" in selector:
                assert selector["group"] in task.groups and selector["group"] in task.validation_groups
            if "label" in selector:
                assert (task.labels == selector["label"]).any() and (task.validation_labels == selector["label"]).any()


def test_the_backdoor_triggers_only_digits_of_other_classes_and_pairs_them_with_their_clean_copies():
    task = load_task("coar.tasks.demos.backdoor:task", {**TINY, "n_test": 30, "label": 0}, restore=True)
    triggered, clean = task.groups["triggered"], task.groups["clean"]
    assert len(clean) == 30 and not (task.labels[triggered] == 0).any()
    ids = [task.example_ids[i].replace("|triggered", "|clean") for i in triggered]
    assert set(ids) <= {task.example_ids[i] for i in clean}


def test_the_subpopulation_groups_split_both_backgrounds_into_minority_and_majority():
    task = load_task("coar.tasks.demos.subpopulation:task", {**TINY, "n_test": 40}, restore=True)
    groups = task.groups
    assert sorted(groups["minority"]) == sorted(groups["y0_s1"] + groups["y1_s0"])
    assert sorted(groups["majority"]) == sorted(groups["y0_s0"] + groups["y1_s1"])
    assert len(groups["minority"]) + len(groups["majority"]) == task.n_examples == 80
    assert set(task.labels.tolist()) == {0, 1}


def test_the_typographic_task_shows_every_digit_clean_and_attacked():
    task = load_task("coar.tasks.demos.typographic:task", {**TINY, "n_test": 20}, restore=True)
    assert len(task.groups["clean"]) == len(task.groups["attacked"]) == 20
    assert len(task.validation_groups["clean"]) == len(task.validation_groups["attacked"])


def test_a_demo_task_restored_gives_the_same_examples_without_training():
    params = {**TINY, "epochs": 1, "n_test": 10}
    trained = load_task("coar.tasks.demos.typographic:task", params)
    restored = load_task("coar.tasks.demos.typographic:task", params, restore=True)
    assert restored.example_ids == trained.example_ids and restored.groups == trained.groups
    assert (restored.inputs == trained.inputs).all() and (restored.validation_inputs == trained.validation_inputs).all()


def _report(k: int, target_after: float, ratio: float | None, passed: bool) -> dict:
    accuracy = lambda before, after: {"accuracy": [before, after]}  # noqa: E731
    return {"k": k, "checks": {"passed": passed},
            "metrics": {"target": accuracy(0.2, target_after), "reference": accuracy(1.0, 0.99),
                        "validation_target": accuracy(0.1, 0.8), "validation_reference": accuracy(1.0, 1.0)},
            "predicted_vs_realised": {"realised_over_predicted": {"target": ratio}}}


def test_the_benchmark_tabulates_mean_and_sample_spread_over_seeds_and_the_seeds_that_met_the_target(tmp_path):
    bench = load_benchmark("edit_demos")
    seeds = [bench.headline(_report(2, 0.6, 0.8, True)), bench.headline(_report(4, 1.0, None, False))]
    rows = {("backdoor", "verified"): [{"seed": s, **h, "met": bench.met("backdoor", h)} for s, h in enumerate(seeds)]}
    line = bench.table(rows).splitlines()[2]
    assert line.startswith("| backdoor | verified | 2 | 3.0 ± 1.4 | 20.0 ± 0.0 → 80.0 ± 28.3 |")
    # seed 0 reaches 60% of triggered digits right (< 80%); seed 1 100% with 1 point of clean accuracy lost
    assert line.endswith("| 0.80 | 1/2 | 1/2 (target >= 80%, reference loss <= 2; met on [1]) |")
    config = yaml.safe_load(bench.seed_config("backdoor", 3, "prefix", tmp_path).read_text())
    assert (config["run"], config["seed"], config["task"]["params"]["seed"]) == ("backdoor_s3", 3, 3)
    assert config["edits"][0]["selection"] == "prefix"


def test_with_the_surrogate_the_benchmark_fits_it_and_shows_its_realised_over_predicted(tmp_path):
    bench = load_benchmark("edit_demos")
    config = yaml.safe_load(bench.seed_config("backdoor", 0, "verified", tmp_path, surrogate=True).read_text())
    assert config["surrogate"] == {"kind": "projected_quadratic"}
    report = _report(2, 0.9, 0.8, True)
    report["predicted_vs_realised"]["surrogate_realised_over_predicted"] = {"target": 0.97}
    assert bench.headline(report)["ratio"] == 0.97


def test_the_benchmark_reads_a_per_example_report_as_medians_over_its_examples():
    examples = [{"k": k, "reference_accuracy": [1.0, after], "test_reference_accuracy": [1.0, 1.0]}
                for k, after in ((2, 0.99), (4, 0.98), (9, 1.0))]
    report = {"per_example": {"examples": examples}, "checks": {"passed": True},
              "metrics": {"target": {"accuracy": [0.0, 2 / 3]}}}
    h = load_benchmark("edit_demos").headline(report)
    assert h["k"] == 4 and h["target_after"] == pytest.approx(200 / 3)
    assert h["validation_reference_after"] == pytest.approx(99.0) and h["reference_after"] == 100
