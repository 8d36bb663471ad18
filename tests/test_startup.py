"""Refused at start-up, or at prepare before anything is saved: values the schema lets through,
runs that cannot fit the machine, unreadable files; and one default per shared option."""

import inspect

import pytest
import yaml

from coar import baselines, constants, steps
from coar.cli import _parser
from coar.forward import run_masked

from tests.snakemake_runs import REPO

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["properties"]
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
TASK = "tests.tasks_for_tests:task"


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    steps.prepare(TASK, {"n": 6}, ["linear"], ["*"], [], run)
    return run


# ----------------------------------------------------------------------------- one default per option


def command_defaults(option: str) -> dict[str, object]:
    """{command: default} of `option` in every `coar` subcommand that has it."""
    commands = next(a for a in _parser()._actions if a.dest == "command").choices
    return {name: action.default for name, sub in commands.items() for action in sub._actions
            if option in action.option_strings}


@pytest.mark.parametrize("key, option, default", [
    ("max_batch", "--max-batch", constants.DEFAULT_MAX_BATCH),
    ("masks_per_pass", "--masks-per-pass", constants.DEFAULT_MASKS_PER_PASS),
])
def test_a_batching_option_has_one_default_in_the_schema_the_config_every_command_and_function(key, option, default):
    assert SCHEMA[key]["default"] == CONFIG[key] == default
    assert set(command_defaults(option)) == {"collect", "baseline"}
    assert set(command_defaults(option).values()) == {default}
    for function in (run_masked, baselines.attribute, baselines.leave_one_out):
        assert inspect.signature(function).parameters[key].default == default, function.__name__


def test_every_command_that_reads_max_batch_accepts_auto_and_refuses_nonsense(capsys):
    for command in ("collect", "baseline"):
        sub = next(a for a in _parser()._actions if a.dest == "command").choices[command]
        action = next(a for a in sub._actions if "--max-batch" in a.option_strings)
        assert action.type("auto") == "auto" and action.type("96") == 96
        for bad in ("0", "1.0", "big"):
            with pytest.raises(Exception, match="positive whole number or 'auto'"):
                action.type(bad)


def test_a_baseline_runs_with_max_batch_auto(run_dir):
    result = steps.baseline(run_dir, run_dir / "loo.h5", method="loo", ablation="weight", output_fn=None,
                            masks_per_pass=4, max_batch="auto", n_steps=4, device="cpu")
    assert result["method"] == "loo" and (run_dir / "loo.h5").exists()


def test_nonfinite_is_no_longer_an_option_since_collect_always_refuses_non_finite_outputs():
    assert "nonfinite" not in SCHEMA
    assert not command_defaults("--nonfinite")
    assert "nonfinite" not in inspect.signature(steps.collect).parameters
