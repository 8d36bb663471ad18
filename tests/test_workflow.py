"""The Snakemake workflow: dry run and lint on the default config, a tiny end-to-end run,
resuming after a killed run, and bad configs refused before any work."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"

TINY = {
    "run": "tiny",
    "task": {"spec": "coar.tasks.digits:task", "params": {"epochs": 4, "width": 0.25, "test_fraction": 0.1}},
    "alpha": 0.05,
    "masks": 400,
    "shards": 3,
    "masks_per_pass": 8,
    "evaluation": {"heldout_masks": 60},
}


def snakemake(workdir: Path, *args: str, config: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    cmd = ["snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir), "--cores", "2"]
    if config is not None:
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(path)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, **kwargs)


def test_dry_run_of_the_default_config_plans_every_step(tmp_path):
    result = snakemake(tmp_path, "-n")
    assert result.returncode == 0, result.stderr
    for rule in ["prepare", "collect", "merge", "collect_heldout", "fit", "evaluate", "summarize"]:
        assert f"rule {rule}:" in result.stdout


def test_lint_is_clean_on_the_default_config(tmp_path):
    result = snakemake(tmp_path, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "change, key",
    [
        ({"colour": "blue"}, "colour"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": 0}, "alpha"),
        ({"masks": 0}, "masks"),
        ({"task": {"spec": "no_such_module_xyz:task"}}, "task.spec"),
        ({"ablation": "erase"}, "ablation"),
        ({"shards": 500}, "shards"),
    ],
)
def test_bad_config_stops_before_any_work_naming_the_key(tmp_path, change, key):
    result = snakemake(tmp_path, "-n", config={**TINY, **change})
    assert result.returncode != 0
    assert key in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny")
    start = time.perf_counter()
    result = snakemake(workdir, config=TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, time.perf_counter() - start


def test_tiny_run_writes_attributions_and_a_good_evaluation(tiny_run):
    workdir, seconds = tiny_run
    run = workdir / "results" / "tiny"
    with h5py.File(run / "attributions.h5", "r") as f:
        n, n_components = f["weight"].shape
        assert f.attrs["encoding"] == "1 = ablated"
        assert f["bias"].shape == (n,)
        assert len(f["example_ids"]) == n
    info = json.loads((run / "prepare.json").read_text())
    assert (n, n_components) == (info["n_examples"], info["n_components"])
    evaluation = json.loads((run / "evaluation.json").read_text())
    with h5py.File(run / "heldout" / "alpha-0.05.h5", "r") as f:
        heldout_rows = len(f["masks"])
    # Held-out masks are independent draws: all kept, even those equal to a training mask.
    assert evaluation["alpha"] == 0.05 and evaluation["n_heldout_masks"] == heldout_rows == TINY["evaluation"]["heldout_masks"]
    assert evaluation["mean_correlation"] > 0.5
    assert set(evaluation["by_alpha"]) == {"0.025", "0.05", "0.1"}
    assert (run / "summary.md").read_text().startswith("# coar run `tiny`")
    assert (run / "plots" / "correlation_histogram.png").stat().st_size > 1000
    assert seconds < 180


def test_heldout_masks_are_all_kept_and_their_coincidences_with_training_masks_counted(tiny_run):
    # 88 components: at alpha 0.025 about 1 held-out mask in 10 is empty, like some training masks.
    # Dropping those would bias the held-out set; they are kept and reported instead.
    run = tiny_run[0] / "results" / "tiny"
    with h5py.File(run / "dataset.h5", "r") as f:
        train = {row.tobytes() for row in f["masks"][:]}
    evaluation = json.loads((run / "evaluation.json").read_text())
    summary = (run / "summary.md").read_text()
    counts = {}
    for alpha, result in evaluation["by_alpha"].items():
        with h5py.File(run / "heldout" / f"alpha-{alpha}.h5", "r") as f:
            masks = f["masks"][:]
        assert len(masks) == result["n_masks"] == TINY["evaluation"]["heldout_masks"]
        counts[alpha] = sum(row.tobytes() in train for row in masks)
        assert result["coincident_with_training"] == counts[alpha]
        assert f"| {alpha} | {len(masks)} | {counts[alpha]} |" in summary
    assert counts["0.025"] > 0, "the small model must meet coincidences for this test to mean anything"
    assert evaluation["heldout_coincident_with_training"] == counts["0.05"]


def test_killed_run_resumes_recomputing_only_missing_shards_with_identical_results(tiny_run, tmp_path):
    reference = tiny_run[0] / "results" / "tiny" / "attributions.h5"
    shards = tmp_path / "results" / "tiny" / "shards"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY))
    cmd = ["snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(tmp_path), "--cores", "1",
           "--configfile", str(tmp_path / "config.yaml")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # With one core, jobs run one at a time: step 2 done = prepare and one collect shard finished.
        for line in proc.stderr:
            if "2 of " in line and "steps" in line:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a hard kill, like a lost node: no clean-up runs
        proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.h5")}
    assert 0 < len(done) < TINY["shards"], "the kill must land during collection"
    assert not (tmp_path / "results" / "tiny" / "attributions.h5").exists()

    subprocess.run(cmd + ["--unlock"], check=True, capture_output=True)
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, mtime in done.items():
        assert (shards / name).stat().st_mtime_ns == mtime, f"{name} was recomputed"
    with h5py.File(reference, "r") as a, h5py.File(tmp_path / "results" / "tiny" / "attributions.h5", "r") as b:
        assert np.array_equal(a["weight"][:], b["weight"][:]) and np.array_equal(a["bias"][:], b["bias"][:])
