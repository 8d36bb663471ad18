"""Errors that help: a mistyped config key, a pattern that matches nothing, an exception in the
user's own task."""

from __future__ import annotations

import pytest
import torchvision
import yaml

from coar.cli import main
from coar.components import discover
from coar.config import ConfigError, check_keys
from tests.snakemake_runs import REPO, snakemake

DEFAULTS = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.mark.parametrize("bad, expected", [
    ({"mask": 300}, "unknown config key 'mask': did you mean 'masks'"),
    ({"solver": {**DEFAULTS["solver"], "methd": "ols"}}, "unknown config key 'solver.methd': did you mean 'solver.method'"),
    ({"zzz": 1}, "unknown config key 'zzz': known keys: run, task"),
])
def test_an_unknown_config_key_is_named_with_the_closest_known_ones(bad, expected):
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        check_keys({**DEFAULTS, **bad})
    check_keys(DEFAULTS)  # every default key is known


def test_the_workflow_refuses_a_mistyped_key_in_a_few_lines_not_the_schema(tmp_path):
    (tmp_path / "c.yaml").write_text("mask: 300\n")
    result = snakemake(tmp_path, "-n", config=tmp_path / "c.yaml")
    assert result.returncode != 0
    assert "did you mean 'masks'" in result.stderr + result.stdout
    assert len((result.stderr + result.stdout).splitlines()) < 20


def test_a_pattern_that_matches_nothing_lists_the_closest_module_names():
    model = torchvision.models.resnet18()
    with pytest.raises(ValueError, match=r"closest modules: layer4\.1\.conv2, layer4\.1\.conv1"):
        discover(model, "conv", ["layer4.1.conv"])
    with pytest.raises(ValueError, match=r"kind\(s\) \['linear'\] only"):
        discover(model, "conv", ["fc"])


def test_an_exception_in_the_users_task_prints_its_last_frames_and_the_debug_switch(tmp_path, monkeypatch, capsys):
    (tmp_path / "failing_task.py").write_text("def task(params):\n    return helper()\n\n"
                                              "def helper():\n    return {}['missing']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("COAR_DEBUG", raising=False)
    assert main(["prepare", "--task", "failing_task:task", "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "raised KeyError: 'missing'" in err and "COAR_DEBUG=1" in err
    assert "failing_task.py\", line 5, in helper" in err


def test_coars_own_refusals_stay_one_line(tmp_path, capsys):
    assert main(["show", str(tmp_path), "--example", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "prepare.json is missing" in err
