"""coar in the user's own project: its workflow used as a Snakemake module from a Snakefile in
another folder, with the config and the results in that folder (docs/user-guide.md)."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

import coar
from tests.snakemake_runs import SNAKEFILE, TINY

pytestmark = pytest.mark.slow  # runs the workflow: left out of the quick loop (-m 'not slow')

USER_SNAKEFILE = """\
configfile: "config/config.yaml"


module coar:
    snakefile: {snakefile!r}
    config: config


use rule * from coar as coar_*


rule all:
    input: rules.coar_all.input
    default_target: True
"""


def project(folder, config: dict) -> None:
    """A user's project folder: its own Snakefile using coar as a module, and its config."""
    (folder / "config").mkdir(parents=True)
    (folder / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "Snakefile").write_text(USER_SNAKEFILE.format(snakefile=str(SNAKEFILE)))


def snakemake_in(folder, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", "--cores", "2", *args], cwd=folder, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_the_workflow_runs_as_a_module_of_a_project_outside_the_checkout(tmp_path):
    folder = tmp_path / "my_project"
    # only the keys it changes (the others keep coar's defaults); one baseline and no edits, to be
    # quick (the edit rules planned as a module: tests/test_edit_checks.py)
    project(folder, {**TINY, "edits": [], "evaluation": {**TINY["evaluation"], "baselines": ["loo"]}})
    result = snakemake_in(folder)
    assert result.returncode == 0, result.stderr[-3000:]
    run = folder / "results" / "tiny"
    assert (run / "summary.md").exists() and (run / "comparison.json").exists()
    assert coar.open(run).info["n_masks"] == TINY["masks"]


def test_a_folder_named_coar_on_the_path_does_not_shadow_the_installed_package(tmp_path):
    # install.sh puts the clone's root on the path (editable_mode=compat), so the real package is
    # found before a folder named coar (a clone, put on PYTHONPATH by its parent) that Python would
    # take as a namespace package; the Snakefile still names such a folder for installs that find
    # coar through an import hook, which a namespace package shadows.
    folder = tmp_path / "my_project"
    project(folder, TINY)
    (folder / "coar" / "config").mkdir(parents=True)
    result = snakemake_in(folder, "-n", env={"PYTHONPATH": str(folder)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "shadows it" not in result.stderr + result.stdout
