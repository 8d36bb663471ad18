"""Growing a run: more masks at a fixed shard size (shard_masks) reuse every finished shard,
never re-prepare the model nor rerun the baselines, and give the attributions a fresh run at
the larger size gives, bit for bit."""

from __future__ import annotations

import re
import shutil

import h5py
import numpy as np
import pytest

from tests.snakemake_runs import TINY, snakemake

pytestmark = pytest.mark.slow  # runs the workflow: left out of the quick loop (-m 'not slow')

SHARD = 150
# (one baseline, to see it is not rerun, and no edits: what growing redoes is the question here)
GROWN = {**TINY, "shards": None, "shard_masks": SHARD, "edits": [],
         "evaluation": {**TINY["evaluation"], "baselines": ["loo"]}}
PREPARED = ("weights.safetensors", "examples.safetensors", "example_ids.json", "groups.json", "components.json",
            "prepare.json")


def job_counts(log: str) -> dict[str, int]:
    """{rule: jobs} from Snakemake's "Job stats" table (empty when nothing ran)."""
    table = log.split("Job stats:", 1)[1] if "Job stats:" in log else ""
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)
            if rule not in ("job", "total")}


def attributions(folder) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(folder / "results" / "tiny" / "attributions.h5", "r") as f:
        return f["weight"][()], f["bias"][()]


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """A run at 2 shards of SHARD masks, then the same run grown to 3 shards: (folder, the grown run's log)."""
    folder = tmp_path_factory.mktemp("grow")
    first = snakemake(folder, config={**GROWN, "masks": 2 * SHARD})
    assert first.returncode == 0, first.stderr[-3000:]
    shard0 = (folder / "results" / "tiny" / "shards" / "shard-0.h5").stat().st_mtime_ns
    second = snakemake(folder, config={**GROWN, "masks": 3 * SHARD})
    assert second.returncode == 0, second.stderr[-3000:]
    assert (folder / "results" / "tiny" / "shards" / "shard-0.h5").stat().st_mtime_ns == shard0
    return folder, second.stderr + second.stdout


def test_growing_masks_reruns_only_the_new_shard_and_the_steps_after_merge(grown):
    _, log = grown
    jobs = job_counts(log)
    assert jobs.get("collect") == 1 and "prepare" not in jobs and "baseline" not in jobs, jobs
    assert {"check_masks", "merge", "fit", "evaluate"} <= set(jobs), jobs


def test_a_grown_run_equals_a_fresh_run_at_the_larger_size_bit_for_bit(grown, tmp_path):
    folder, _ = grown
    # The fresh run gets the same prepared model (training is not what is compared here), with the
    # stamp of the config it was prepared for, older than the model as in the grown run's folder.
    (tmp_path / "results" / "tiny" / "config").mkdir(parents=True)
    for name in (*PREPARED, *(f"config/{p.name}" for p in (folder / "results" / "tiny" / "config").glob("prepare-*.json"))):
        shutil.copy2(folder / "results" / "tiny" / name, tmp_path / "results" / "tiny" / name)
    # (a flag first: the helper puts these arguments after --configfile, which takes several values)
    fresh = snakemake(tmp_path, "--rerun-incomplete", "results/tiny/attributions.h5", config={**GROWN, "masks": 3 * SHARD})
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "prepare" not in job_counts(fresh.stderr + fresh.stdout)
    for grown_array, fresh_array in zip(attributions(folder), attributions(tmp_path)):
        np.testing.assert_array_equal(grown_array, fresh_array)


def test_too_few_masks_for_ols_are_refused_at_start_up_once_the_run_is_prepared(grown):
    folder, _ = grown
    result = snakemake(folder, "-n", config={**GROWN, "masks": 50})
    assert result.returncode != 0 and "ols needs more masks than components" in result.stderr + result.stdout


def test_too_few_masks_for_ols_are_refused_right_after_prepare_before_any_collection(tmp_path):
    result = snakemake(tmp_path, config={**GROWN, "masks": 50}, cores=1)
    assert result.returncode != 0 and "ols needs more masks than components" in result.stderr + result.stdout
    assert (tmp_path / "results" / "tiny" / "prepare.json").exists()
    assert not list((tmp_path / "results" / "tiny").glob("shards/shard-*.h5"))
