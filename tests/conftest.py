"""Shared pytest set-up: strict extension loading, and one tiny workflow run for the workflow tests."""

import os
from pathlib import Path

import pytest

# Tests run strict: a broken compiled extension must fail loudly, never fall back silently.
os.environ.setdefault("COAR_REQUIRE_EXT", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and far faster than two on a loaded machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The folder of one complete run of the tiny CI config, shared by every test that reads it."""
    from tests.snakemake_runs import run_tiny

    workdir = tmp_path_factory.mktemp("tiny")
    run_tiny(workdir)
    return workdir


def pytest_collection_modifyitems(items: list) -> None:
    """Every test that reads the shared tiny workflow run is slow: the quick loop
    (python -m pytest -q -m "not slow" tests) leaves out what needs a workflow run."""
    for item in items:
        if "tiny_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
