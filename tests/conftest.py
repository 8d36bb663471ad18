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


@pytest.fixture(scope="session", autouse=True)
def threads_per_worker():
    """The suite runs on every core in parallel (addopts: -n logical), one test file per core: each
    worker's torch gets its share of the cores, not all of them (oversubscribed, torch's threads
    spin against each other)."""
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The folder of one complete run of the tiny CI config, shared by every test that reads it:
    made once per session, by whichever parallel worker needs it first, the others waiting."""
    from filelock import FileLock

    from tests.snakemake_runs import run_tiny

    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # the workers' base folders share this parent
    workdir, done = root / "tiny", root / "tiny.done"
    with FileLock(root / "tiny.lock"):
        if not done.exists():
            workdir.mkdir(exist_ok=True)
            run_tiny(workdir)
            done.touch()
    return workdir


def pytest_collection_modifyitems(items: list) -> None:
    """Every test that reads the shared tiny workflow run is slow: the quick loop
    (python -m pytest -q -m "not slow" tests) leaves out what needs a workflow run.

    The files then run in the order that keeps both cores busy (the workers take files in this
    order, addopts --no-loadscope-reorder): first one file that reads the tiny run, so that one
    worker makes it at once; the slow files that do not read it, while it is being made; the
    other files that read it; last the quick files, many and short, which fill in the end."""
    uses_tiny = set()
    for item in items:
        if "tiny_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
            uses_tiny.add(item.path)
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    maker = next((item.path for item in items if item.path in uses_tiny), None)

    def rank(item) -> int:
        if item.path == maker:
            return 0
        if item.path in slow:
            return 2 if item.path in uses_tiny else 1
        return 3

    items.sort(key=rank)  # stable: each file's tests keep their order
