"""A mistake in an edit is refused before the first collection job, naming the edit and the key:
what the config alone shows at start-up (coar.config.check_config, EditSpec.from_config), what
the task shows as soon as prepare has saved the run (coar.edit.checks: the workflow's check_edits
job, which the collection waits for). And the default run's edit stays the default run's: a
config of one's own makes the edits it names, none when it names none."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from coar import steps
from coar.cli import main
from coar.config import ConfigError, check_config, check_values, fill_defaults, is_default_run
from coar.edit.checks import check_edits_on_run
from coar.edit.spec import EditConfigError, EditSpec, check_edits
from tests.snakemake_runs import REPO, SNAKEFILE, TINY, snakemake
from tests.test_config import config as default_config

DEFAULTS = REPO / "config" / "config.yaml"
TASK = "tests.tasks_for_tests:with_validation"
"""12 examples and 9 validation examples, labels 0, 1, 2 in turn, groups `first` (label 0) and `others`."""
GOOD = {"name": "forget_0", "target": {"label": 0}, "reference": {"rest": True}, "direction": "lower"}
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
"""The workflow's jobs import the test tasks."""
MINE = {"run": "mine", "task": {"spec": TASK, "params": {}}, "components": {"kinds": ["linear"]}, "alpha": 0.2,
        "masks": 24, "shards": 1, "evaluation": {"heldout_masks": 10, "baselines": []}}
"""A run of one's own on the tiny task: one shard of 24 masks, held-out masks at three alphas, no baselines."""
EDIT_JOBS = ("check_edits", "edit_plan", "edit_apply")


def planned_jobs(result) -> dict[str, int]:
    """{rule: jobs} of a dry run's "Job stats" table."""
    assert result.returncode == 0, result.stderr[-3000:]
    table = (result.stdout + result.stderr).split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, re.M) if rule not in ("job", "total")}


# ----------------------------------------------------------------------------- the default run's edit stays there


@pytest.mark.slow
@pytest.mark.parametrize("args", [(), ("--config", "run=renamed")])
def test_the_default_run_still_plans_its_forget_3_edit(tmp_path, args):
    result = snakemake(tmp_path, "-n", *args)
    jobs = planned_jobs(result)
    assert all(jobs.get(rule) == 1 for rule in EDIT_JOBS), jobs
    assert "edits/forget_3/report.json" in result.stdout


@pytest.mark.parametrize("config", [MINE, {k: v for k, v in TINY.items() if k != "edits"}],
                         ids=["another task", "the digits task"])
@pytest.mark.slow
def test_a_config_file_of_ones_own_without_edits_makes_no_edits_whatever_its_task(tmp_path, config):
    result = snakemake(tmp_path, "-n", config=config, env=ENV)
    jobs = planned_jobs(result)
    assert "collect" in jobs and not set(EDIT_JOBS) & set(jobs), jobs
    assert "forget_3" not in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("edits", [None, [GOOD]], ids=["none named", "one named"])
def test_module_use_makes_the_edits_its_config_names(tmp_path, edits):
    from tests.test_module import project, snakemake_in

    project(tmp_path / "project", MINE if edits is None else {**MINE, "edits": edits})
    result = snakemake_in(tmp_path / "project", "-n", env={"PYTHONPATH": ENV["PYTHONPATH"]})
    jobs = planned_jobs(result)  # the module's rules are coar_<rule>
    assert "coar_collect" in jobs and all(jobs.get(f"coar_{rule}") == (1 if edits else None) for rule in EDIT_JOBS), jobs


def test_fill_defaults_never_fills_edits_nor_the_default_tasks_params_into_another_task(tmp_path):
    own = {"run": "mine", "task": {"spec": TASK}}
    fill_defaults(own, DEFAULTS)
    assert "edits" not in own and own["task"] == {"spec": TASK} and own["masks"] == 4000  # the rest are filled
    digits = {"run": "mine", "task": {"spec": "coar.tasks.digits:task"}}
    fill_defaults(digits, DEFAULTS)
    assert "edits" not in digits
    # were the default task given params, they would be its alone
    defaults = yaml.safe_load(DEFAULTS.read_text())
    defaults["task"]["params"] = {"epochs": 30}
    (tmp_path / "defaults.yaml").write_text(yaml.safe_dump(defaults))
    fill_defaults(own := {"run": "mine", "task": {"spec": TASK}}, tmp_path / "defaults.yaml")
    assert own["task"] == {"spec": TASK}
    fill_defaults(same := {"run": "mine", "task": {"spec": defaults["task"]["spec"]}}, tmp_path / "defaults.yaml")
    assert same["task"]["params"] == {"epochs": 30}


def test_a_config_of_another_task_that_names_no_run_is_refused_rather_than_writing_into_the_default_runs_folder():
    with pytest.raises(ConfigError, match=r"^config key 'run': not given, so this run of task "
                                          r"'tests.tasks_for_tests:with_validation' would write into results/digits/"):
        fill_defaults({"task": {"spec": TASK}}, DEFAULTS)
    fill_defaults(config := {"masks": 100}, DEFAULTS)  # the default task: its own run
    assert config["run"] == "digits"


def test_only_snakemake_without_a_config_file_of_ones_own_is_the_default_run():
    assert is_default_run({}, [], DEFAULTS)
    assert is_default_run({"run": "renamed", "masks": 100}, [], DEFAULTS)
    assert not is_default_run({}, [Path("my.yaml")], DEFAULTS)
    assert not is_default_run({"task": {"spec": TASK}}, [], DEFAULTS)  # --config naming another task


# ----------------------------------------------------------------------------- refused at start-up


def edit_with(**changes) -> dict:
    return {**GOOD, **changes}


@pytest.mark.parametrize("content, problem", [
    (b"\x80\x04\x95pickle", r"is not UTF-8 text \(byte 0x80 at offset 0\)"),
    (b"", "is empty: it names no example id"),
    (b"\n  \n\t\n", "is empty: it names no example id"),
])
def test_an_ids_file_that_is_not_text_or_names_no_id_is_refused_at_start_up(tmp_path, content, problem):
    path = tmp_path / "ids.txt"
    path.write_bytes(content)
    message = rf"^edit 'forget_0', key 'target.ids': '{re.escape(str(path))}' {problem}"
    with pytest.raises(EditConfigError, match=message):
        EditSpec.from_config(edit_with(target={"ids": str(path)}))
    with pytest.raises(EditConfigError, match=message):
        check_config(default_config(edits=[edit_with(target={"ids": str(path)})]))


@pytest.mark.parametrize("text, message", [
    ("evaluation: {heldout_masks: 1e9}", r"^config key 'evaluation.heldout_masks': '1e9' is not of type 'integer' "
                                         r".*YAML reads 1e9 as text, not a number: write it out, 1000000000"),
    ("masks: 1e6", r"^config key 'masks': .*YAML reads 1e6 as text, not a number: write it out, 1000000"),
])
def test_a_size_written_1e9_which_yaml_reads_as_text_is_refused_in_one_line_naming_the_key(text, message):
    with pytest.raises(ConfigError, match=message) as refused:
        check_values(default_config(**yaml.safe_load(text)))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("changes, message", [
    ({"evaluation": {"heldout_masks": 1.0e9, "alphas": [], "baselines": []}},  # YAML 1.0e+9, JSON 1e9
     r"^config key 'evaluation.heldout_masks': 1000000000.0 must be a whole number"),
    ({"evaluation": {"heldout_masks": 10**13, "alphas": [], "baselines": []}},
     r"^config key 'evaluation.heldout_masks': a collection job needs about .* GB of memory"),
    ({"masks_per_pass": 10**9}, r"^config key 'masks_per_pass': 1000000000 masks in one forward pass .* more than "
                                r"max_batch \(512\) allows"),
    ({"masks": "auto", "masks_auto": {"max_masks": 10**9, "round_masks": None, "min_gain": 0.005, "confidence": 0.95}},
     r"^config key 'shard_masks': 1000000000 masks make 1000000 collection jobs.*fewer masks \(config key "
     r"'masks_auto.max_masks'\)"),
])
def test_a_size_key_a_run_cannot_hold_is_refused_at_start_up_in_one_line_naming_the_key(changes, message):
    with pytest.raises(ConfigError, match=message) as refused:
        check_config(default_config(**changes))
    assert "\n" not in str(refused.value)


# ----------------------------------------------------------------------------- refused once the run is prepared


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Prepared tiny runs by task params: {} (validation labels 0, 1, 2), {"n_validation": 2}
    (validation labels 0, 1) and {"validation": False} (none)."""
    folder = tmp_path_factory.mktemp("prepared")
    runs = {}

    def run(**params) -> Path:
        key = tuple(sorted(params.items()))
        if key not in runs:
            runs[key] = folder / f"run{len(runs)}"
            steps.prepare(TASK, params, ["linear"], ["*"], [], runs[key])
        return runs[key]

    return run


def check(run_dir: Path, *edits: dict, **params) -> list[str]:
    return check_edits_on_run(run_dir, check_edits(list(edits)), TASK, params)


def test_good_edits_pass_and_say_what_they_select(prepared):
    lines = check(prepared(), GOOD, edit_with(name="fix", target={"misclassified": True},
                                              reference={"misclassified": False}, direction="raise", k=3),
                  edit_with(name="each", per_example=True))
    assert lines[0] == ("edit 'forget_0': 4 target, 8 reference among the run's examples; 3 target, 6 reference "
                        "among the validation examples; k auto, up to 11 of the 11 components matching ['*']")
    assert "k 3 of the 11" in lines[1]
    assert lines[2].startswith("edit 'each': 4 target, 8 reference among the run's examples; 6 reference among "
                               "the validation examples;")


def ids_file(tmp_path: Path, *ids: str) -> str:
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(ids) + "\n")
    return str(path)


@pytest.mark.parametrize("change, message", [
    # a label no example has
    ({"target": {"label": 7}},
     r"^edit 'forget_0', key 'target.label': no example among the run's examples \(12\) has label 7; their labels "
     r"are \[0, 1, 2\]"),
    ({"reference": {"label": 5}},
     r"^edit 'forget_0', key 'reference.label': no example among the run's examples \(12\) has label 5"),
    # k larger than the components the edit may touch, a pattern matching no module
    ({"k": 12}, r"^edit 'forget_0', key 'k': 12 is more than the 11 components matching \['\*'\]"),
    ({"components": ["layers.3"], "k": 4}, r"^edit 'forget_0', key 'k': 4 is more than the 3 components"),
    ({"components": ["conv*"]}, r"^edit 'forget_0', key 'components': \['conv\*'\] match none of the run's modules, "
                                r"e.g. \['layers.0', 'layers.3'\]"),
    # an unknown group
    ({"target": {"group": "firts"}}, r"^edit 'forget_0', key 'target.group': unknown group 'firts'; the run's examples "
                                     r"have the groups \['first', 'others'\]"),
    # empty or overlapping selections
    ({"target": {"label": 0, "group": "others"}}, r"^edit 'forget_0', key 'target': .* matches none of the run's "
                                                  r"examples \(12\)"),
    ({"reference": {"group": "first"}}, r"^edit 'forget_0', keys 'target' and 'reference': 4 of the run's examples "
                                        r"are selected by both"),
    ({"target": {"misclassified": True}, "reference": {"label": 1}},
     r"^edit 'forget_0', keys 'target' and 'reference': .* selected by both"),
])
def test_an_edit_the_run_cannot_make_is_refused_naming_the_edit_and_the_key(prepared, change, message):
    with pytest.raises(EditConfigError, match=message):
        check(prepared(), edit_with(**change))


def test_a_selection_empty_among_the_validation_examples_alone_is_refused_naming_them(prepared):
    run = prepared(n_validation=2)  # validation labels 0 and 1
    with pytest.raises(EditConfigError, match=r"^edit 'forget_0', key 'target.label': no example among the "
                                              r"validation examples \(2\) has label 2; their labels are \[0, 1\]"):
        check(run, edit_with(target={"label": 2}), n_validation=2)


def test_an_ids_file_naming_unknown_ids_is_refused_listing_some(prepared, tmp_path):
    path = ids_file(tmp_path, "0", "3", "validation:1", "cat.png", "validation:99", "12", "x")
    with pytest.raises(EditConfigError, match=rf"^edit 'forget_0', key 'target.ids': '{re.escape(path)}' names 4 id\(s\) "
                                              r"that are neither the run's example ids .* e.g. \['cat.png', "
                                              r"'validation:99', '12'\]"):
        check(prepared(), edit_with(target={"ids": path}))
    # known ids, but only validation ones: nothing to rank the components by among the run's examples
    only_validation = ids_file(tmp_path, "validation:0", "validation:3")
    with pytest.raises(EditConfigError, match=r"^edit 'forget_0', key 'target': .* matches none of the run's examples"):
        check(prepared(), edit_with(target={"ids": only_validation}))
    assert check(prepared(), edit_with(target={"ids": ids_file(tmp_path, "0", "3", "validation:0", "validation:3")}))


def test_a_task_without_validation_examples_is_refused_naming_the_edit_and_the_task_key(prepared):
    with pytest.raises(EditConfigError, match=r"^edit 'forget_0': task 'tests.tasks_for_tests:with_validation' "
                                              r"\(config key 'task.spec'\) gives no validation examples"):
        check(prepared(validation=False), GOOD, validation=False)


def test_a_per_example_edit_needs_its_target_among_the_run_and_its_reference_on_validation_too(prepared, tmp_path):
    """Its targets are the run's examples (ranked against the run's reference, as any edit's), each
    checked against the reference on validation: no target among the validation examples is needed."""
    each = edit_with(name="each", per_example=True)
    with pytest.raises(EditConfigError, match=r"^edit 'each', key 'target': .* matches none of the run's examples"):
        check(prepared(), {**each, "target": {"ids": ids_file(tmp_path, "validation:0", "validation:1")}})
    with pytest.raises(EditConfigError, match=r"^edit 'each', key 'reference': .* matches none of the validation "
                                              r"examples \(9\)"):
        check(prepared(), {**each, "reference": {"ids": ids_file(tmp_path, "1", "2")}})
    assert check(prepared(n_validation=2), {**each, "target": {"label": 2}}, n_validation=2)  # no validation 2s


def test_the_check_edits_command_refuses_in_one_line_and_logs_the_refusal(prepared, tmp_path, capsys, monkeypatch):
    import json

    monkeypatch.delenv("COAR_DEBUG", raising=False)
    log = tmp_path / "check.log"
    args = ["check-edits", "--run-dir", str(prepared()), "--task", TASK, "--device", "cpu", "--log", str(log)]
    assert main([*args, "--edits", json.dumps([edit_with(target={"label": 9})])]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "edit 'forget_0', key 'target.label': no example" in err
    assert log.read_text().startswith("refused: edit 'forget_0', key 'target.label'")
    assert main([*args, "--edits", json.dumps([GOOD])]) == 0
    assert log.read_text().startswith("edit 'forget_0': 4 target, 8 reference")


# ----------------------------------------------------------------------------- the workflow: before any collection


@pytest.mark.slow
def test_a_bad_label_stops_the_workflow_in_prepare_before_any_collection(tmp_path):
    # the prepare job checks the edits against what it saved; no collection job waits on a file of it
    result = snakemake(tmp_path, config={**MINE, "edits": [edit_with(target={"label": 7})]}, env=ENV)
    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert "Error in rule prepare" in log and "edit 'forget_0', key 'target.label': no example" in log
    run = tmp_path / "results" / "mine"
    assert not any((run / folder).exists() for folder in ("shards", "heldout", "baselines")), sorted(os.listdir(run))


@pytest.mark.slow
def test_held_out_masks_that_cannot_fit_the_prepared_run_are_refused_before_any_collection(tmp_path):
    """1e7 held-out masks fit a run of one example and one component in 2 GB (start-up), not the
    prepared run's 12 examples and 11 components: check_masks refuses, and nothing is collected
    (it has the highest priority: on one core it runs before any collection job)."""
    config = {**MINE, "evaluation": {"heldout_masks": 10**7, "baselines": []}}
    result = snakemake(tmp_path, config=config, env={**ENV, "SLURM_MEM_PER_NODE": "2000"}, cores=1)
    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert "Error in rule check_masks" in log and "config key 'evaluation.heldout_masks'" in log
    assert not any((tmp_path / "results" / "mine" / folder).exists() for folder in ("shards", "heldout"))


@pytest.mark.slow
def test_a_surrogate_the_prepared_run_cannot_hold_is_refused_before_any_collection(tmp_path):
    """The surrogate's basis comes from the 11 x 12 OLS weights: rank 12 is refused by check_masks
    (on one core before any collection job), then at start-up once the run is prepared, as are too
    few masks for its linear part; the prepared run is kept for the corrected config."""
    config = {**MINE, "surrogate": {"kind": "projected_quadratic", "rank": 12}}
    result = snakemake(tmp_path, config=config, env=ENV, cores=1)
    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert "Error in rule check_masks" in log and "config key 'surrogate.rank': rank 12 exceeds" in log
    assert "use surrogate.rank <= 11" in log
    assert not any((tmp_path / "results" / "mine" / folder).exists() for folder in ("shards", "heldout"))
    assert (tmp_path / "results" / "mine" / "prepare.json").exists()
    for surrogate, masks, message in (({"rank": 12}, MINE["masks"], "config key 'surrogate.rank'"),
                                      ({"rank": 2}, 12, "config key 'masks': 12 masks cannot determine")):
        again = snakemake(tmp_path, "-n", config={**MINE, "masks": masks,
                                                  "surrogate": {"kind": "projected_quadratic", **surrogate}}, env=ENV)
        assert again.returncode != 0 and message in again.stdout + again.stderr


@pytest.mark.slow
def test_adding_or_changing_an_edit_redoes_the_checks_never_the_collection(tmp_path):
    shard = tmp_path / "results" / "mine" / "shards" / "shard-0.h5"
    target = str(shard.relative_to(tmp_path))
    first = snakemake(tmp_path, target, config=MINE, env=ENV)  # collected without edits
    assert first.returncode == 0, first.stderr[-3000:]
    made = shard.stat().st_mtime_ns
    for edits in ([GOOD], [edit_with(target={"label": 1})]):  # an edit added, then changed
        config = {**MINE, "edits": edits}
        assert planned_jobs(snakemake(tmp_path, "-n", "check_edits", config=config, env=ENV)) == {"check_edits": 1}
        result = snakemake(tmp_path, "check_edits", config=config, env=ENV)
        assert result.returncode == 0, result.stderr[-3000:]
        unchanged = snakemake(tmp_path, "-n", target, config=config, env=ENV)
        assert unchanged.returncode == 0 and "Nothing to be done" in unchanged.stdout + unchanged.stderr
        assert shard.stat().st_mtime_ns == made
