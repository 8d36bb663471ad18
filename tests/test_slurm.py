"""The workflow on a real SLURM cluster, through the slurm workflow profile.

`.ci/slurm_up.sh` starts a single-node cluster (CI runs it); where no SLURM controller answers
`sinfo`, every test here skips and says so. One SLURM run of the tiny config is made, and a
collect job is killed with `scancel` while it runs; the run must retry it and still give
attributions bit-identical to the local run of the same config (the shared tiny run), every mask
row exactly once.
"""

import importlib.util
import shutil
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from coar.masks import sample_masks, shard_ranges
from tests.snakemake_runs import SNAKEFILE, TINY

pytestmark = pytest.mark.slow  # runs the workflow: left out of the quick loop (-m 'not slow')

REPO = Path(__file__).resolve().parents[1]
TARGET = f"results/{TINY['run']}/attributions.h5"
PROFILES = ["--profile", str(REPO / "workflow/profiles/slurm-test"),
            "--workflow-profile", str(REPO / "workflow/profiles/slurm")]
KILLED_SHARD = 1


def slurm_missing() -> str | None:
    """Why the SLURM tests cannot run here, or None when a controller answers and a node is up."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')"
    if shutil.which("sinfo") is None:
        return "no SLURM client (sinfo) here; start a single-node cluster with `bash .ci/slurm_up.sh` as root"
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "no SLURM controller answers sinfo within 15 s; start one with `bash .ci/slurm_up.sh`"
    if result.returncode != 0:
        return f"no SLURM controller answers sinfo ({result.stderr.strip()}); start one with `bash .ci/slurm_up.sh`"
    if not any(state.startswith(("idle", "mix", "alloc")) for state in result.stdout.split()):
        return f"no SLURM node is up (node states: {result.stdout.split()})"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster() -> None:
    """Skip every test here, saying why, unless a SLURM cluster answers (checked once, lazily)."""
    reason = slurm_missing()
    if reason is not None:
        pytest.skip(reason)


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    (workdir / "config.yaml").write_text(yaml.safe_dump(TINY))
    return ["snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
            "--configfile", str(workdir / "config.yaml"), *args, TARGET]


def slurm_jobs(workdir: Path) -> list[tuple[str, str, str]]:
    """(job id, state, comment) of every SLURM job run in `workdir`, finished ones included."""
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T|%k|%Z"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    rows = [line.split("|") for line in out.splitlines()]
    return [(job, state, comment) for job, state, comment, where in rows if Path(where) == workdir.resolve()]


def kill_collect_job_while_it_runs(workdir: Path, proc: subprocess.Popen, shard: int, timeout: float = 300) -> str:
    """scancel the collect job of `shard` once its command has started; return the job id."""
    comment = f"rule_collect_wildcards_{shard}"
    log = workdir / "results" / TINY["run"] / "logs" / f"collect-{shard}.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        running = [job for job, state, c in slurm_jobs(workdir) if c == comment and state == "RUNNING"]
        if running and log.exists():
            subprocess.run(["scancel", running[0]], check=True, timeout=30)
            return running[0]
        time.sleep(0.2)
    raise AssertionError(f"the collect job of shard {shard} was never seen running (snakemake exit code {proc.poll()})")


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory) -> tuple[Path, Path, str]:
    """The tiny config run on SLURM with a collect job killed mid-run, beside the same config run
    locally (the shared tiny run): (local run dir, SLURM work dir, killed job id)."""
    cluster = tmp_path_factory.mktemp("slurm")
    # The test cluster answers at once: its first status check after 2 s, not the profile's 8.
    command = snakemake_command(cluster, *PROFILES, "--slurm-init-seconds-before-status-checks", "2")
    with (cluster / "snakemake.log").open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            killed = kill_collect_job_while_it_runs(cluster, proc, KILLED_SHARD)
            proc.wait(timeout=600)
        finally:
            proc.kill()
    assert proc.returncode == 0, (cluster / "snakemake.log").read_text()[-4000:]
    return tiny_run / "results" / TINY["run"], cluster, killed


def test_slurm_run_gives_attributions_bit_identical_to_the_local_run(runs):
    local_run, workdir, _ = runs
    slurm_dir = workdir / "results" / TINY["run"]
    with h5py.File(local_run / "attributions.h5", "r") as a, h5py.File(slurm_dir / "attributions.h5", "r") as b:
        for name in ["weight", "bias", "lambda"]:
            assert np.array_equal(a[name][:], b[name][:]), name
    states = {comment: state for _, state, comment in slurm_jobs(workdir)}
    assert states["rule_prepare"] == states["rule_merge"] == states["rule_fit"] == "COMPLETED"


def test_collect_job_killed_mid_run_is_retried_and_every_mask_row_appears_once(runs):
    local_run, workdir, killed = runs
    comment = f"rule_collect_wildcards_{KILLED_SHARD}"
    jobs = [(job, state) for job, state, c in slurm_jobs(workdir) if c == comment]
    assert (killed, "CANCELLED") in jobs
    assert [state for job, state in jobs if job != killed] == ["COMPLETED"], jobs  # the retry

    run = workdir / "results" / TINY["run"]
    ranges = shard_ranges(TINY["masks"], TINY["shards"])
    for shard, (start, stop) in enumerate(ranges):
        with h5py.File(run / "shards" / f"shard-{shard}.h5", "r") as f:
            assert (f.attrs["row_start"], f.attrs["row_stop"]) == (start, stop)
            expected = sample_masks(TINY.get("seed", 0), shard, stop - start, f["masks"].shape[1], TINY["alpha"])
            assert np.array_equal(f["masks"][:], expected)
    with h5py.File(local_run / "dataset.h5", "r") as a, h5py.File(run / "dataset.h5", "r") as b:
        assert len(b["masks"]) == TINY["masks"]
        assert np.array_equal(a["masks"][:], b["masks"][:]) and np.array_equal(a["outputs"][:], b["outputs"][:])
