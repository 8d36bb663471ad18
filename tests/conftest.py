"""Shared pytest set-up: strict extension loading, and one tiny workflow run for the workflow tests."""

import os

import pytest

# Tests run strict: a broken compiled extension must fail loudly, never fall back silently.
os.environ.setdefault("COAR_REQUIRE_EXT", "1")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple:
    """(folder, wall seconds) of one complete run of the tiny CI config, shared by every test that reads it."""
    from tests.snakemake_runs import run_tiny

    workdir = tmp_path_factory.mktemp("tiny")
    return workdir, run_tiny(workdir)
