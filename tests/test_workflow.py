"""The Snakemake workflow: dry run and lint on the default config, the tiny end-to-end run
(.test/config/config.yaml), resuming after a killed run, and bad configs refused before any work."""

import json
import os
import re
import shutil
import signal
import subprocess

import h5py
import numpy as np
import pytest
import yaml

import coar
from coar import h5format
from tests.snakemake_runs import SNAKEFILE, TEST_CONFIG, TINY, snakemake

pytestmark = pytest.mark.slow  # runs the workflow: left out of the quick loop (-m 'not slow')

# The one lint left on purpose: rules name no conda environment or container, because the
# environment is made by install.sh (the extension is compiled against the installed torch).
NO_SOFTWARE_DEFINITION = "Specify a conda environment or container for each rule."


def test_dry_run_of_the_default_config_plans_every_step(tmp_path):
    result = snakemake(tmp_path, "-n")
    assert result.returncode == 0, result.stderr
    for rule in ["prepare", "collect", "merge", "collect_heldout", "fit", "evaluate", "summarize", "edit_plan",
                 "edit_apply", "explorer"]:
        assert f"rule {rule}:" in result.stdout


def test_the_rules_are_in_snakefmt_format():
    result = subprocess.run(["snakefmt", "--check", str(SNAKEFILE.parent)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr  # snakefmt workflow reformats them


def test_the_workflow_catalog_file_declares_the_standardized_usage_and_the_report():
    catalog = yaml.safe_load((SNAKEFILE.parents[1] / ".snakemake-workflow-catalog.yml").read_text())
    usage = catalog["usage"]
    assert usage["report"] is True and "--configfile" in usage["mandatory-flags"]["flags"]
    assert set(usage["software-stack-deployment"]) == {"conda", "singularity", "singularity+conda"}
    for needed in ("workflow/Snakefile", "config/README.md", "workflow/report"):
        assert (SNAKEFILE.parents[1] / needed).exists()


def test_lint_finds_nothing_but_the_missing_conda_environments(tmp_path):
    result = snakemake(tmp_path, "--lint")
    text = result.stdout + result.stderr
    findings = re.findall(r"^    \* (.+):$", text, re.M)
    blocks = re.findall(r"^Lints for (.+):$", text, re.M)
    assert findings and set(findings) == {NO_SOFTWARE_DEFINITION}, text
    assert len(blocks) == len(findings) and all(b.startswith("rule ") for b in blocks), text


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


def test_tiny_run_writes_attributions_and_a_good_evaluation(tiny_run):
    run = tiny_run / "results" / "tiny"
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


def test_heldout_masks_are_all_kept_and_their_coincidences_with_training_masks_counted(tiny_run):
    # 88 components: at alpha 0.025 about 1 held-out mask in 10 is empty, like some training masks.
    # Dropping those would bias the held-out set; they are kept and reported instead.
    run = tiny_run / "results" / "tiny"
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
    reference = tiny_run / "results" / "tiny" / "attributions.h5"
    shards = tmp_path / "results" / "tiny" / "shards"
    # (the target is the attributions: the steps after them are not what a kill puts at risk)
    cmd = ["snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(tmp_path), "results/tiny/attributions.h5",
           "--configfile", str(TEST_CONFIG)]
    proc = subprocess.Popen(cmd + ["--cores", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        # With one core, jobs run one at a time: prepare and the checks (priority) first, then the
        # shards; the kill lands as the first collect job finishes.
        for line in proc.stderr:
            if "Finished jobid" in line and "Rule: collect)" in line:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a hard kill, like a lost node: no clean-up runs
        proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.h5")}
    assert 0 < len(done) < TINY["shards"], "the kill must land during collection"
    assert not (tmp_path / "results" / "tiny" / "attributions.h5").exists()

    subprocess.run(cmd + ["--unlock"], check=True, capture_output=True)
    result = subprocess.run(cmd + ["--cores", "2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, mtime in done.items():
        assert (shards / name).stat().st_mtime_ns == mtime, f"{name} was recomputed"
    with h5py.File(reference, "r") as a, h5py.File(tmp_path / "results" / "tiny" / "attributions.h5", "r") as b:
        assert np.array_equal(a["weight"][:], b["weight"][:]) and np.array_equal(a["bias"][:], b["bias"][:])


def test_a_surrogate_asked_of_a_finished_run_is_fitted_and_scored_beside_coar_at_every_alpha(tiny_run, tmp_path):
    """config surrogate: the tiny run, finished, given `surrogate.kind: projected_quadratic`: only
    what depends on it is made (surrogate.h5 from the run's own rows and attributions, then the
    evaluation, comparison, report and explorer), and comparison.json and comparison.md hold a
    `surrogate` row at every alpha, right after COAR's."""
    shutil.copytree(tiny_run, tmp_path, dirs_exist_ok=True)
    run = tmp_path / "results" / "tiny"
    kept = {path: path.stat().st_mtime_ns for path in (run / "attributions.h5", *run.glob("shards/*.h5"),
                                                        *run.glob("heldout/*.h5"), *run.glob("baselines/*.h5"))}
    # The tiny config as written (a config whose task params come in another key order reruns
    # prepare, Snakemake comparing the params' text), asking for a surrogate.
    config = tmp_path / "surrogate.yaml"
    config.write_text(TEST_CONFIG.read_text() + "surrogate: {kind: projected_quadratic, rank: 4}\n")
    result = snakemake(tmp_path, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in kept.items()), "the rows and fits were kept"

    from coar.run import Run

    info = Run(run).info
    surrogate = h5format.read_surrogate(run / "surrogate.h5", Run(run).expect | {"alpha": 0.05})
    assert surrogate.attrs.items() >= {"kind": "projected_quadratic", "rank": 4, "penalty": 10.0,
                                       "basis_method": "ols", "n_masks": TINY["masks"]}.items()
    assert surrogate.weight.shape == (info["n_examples"], info["n_components"])

    comparison = json.loads((run / "comparison.json").read_text())
    assert comparison["methods"][:2] == ["coar", "surrogate"]
    assert set(comparison["mean_correlation"]["surrogate"]) == {"0.025", "0.05", "0.1"}
    assert all(v > 0.5 for v in comparison["mean_correlation"]["surrogate"].values())
    assert comparison["surrogate"] == {"kind": "projected_quadratic", "rank": 4, "penalty": 10.0,
                                       "basis_method": "ols", "n_masks": TINY["masks"]}
    assert re.search(r"^\| surrogate( \| [01]\.\d{3}){3} \|$", (run / "comparison.md").read_text(), re.M)
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["surrogate"]["by_alpha"] == comparison["by_method"]["surrogate"]
    assert "surrogate" in (run / "explorer.html").read_text()

    # coar.open gives the run's surrogate and its scores as coar.attribute does.
    opened = coar.open(run)
    assert opened.info["surrogate"] == comparison["surrogate"]
    np.testing.assert_array_equal(opened.surrogate.weight_, surrogate.weight)
    assert opened.info["heldout_surrogate"] == comparison["by_method"]["surrogate"]["0.05"]
    assert opened.info["mean_heldout_correlation_surrogate"] == comparison["mean_correlation"]["surrogate"]["0.05"]


def test_heldout_collection_needs_no_training_shards(tmp_path):
    result = snakemake(tmp_path, "-n", f"results/{TINY['run']}/heldout/alpha-0.05.h5", config=TEST_CONFIG)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rule collect_heldout:" in result.stdout
    assert "rule merge:" not in result.stdout and "rule collect:" not in result.stdout


def test_every_step_that_reads_results_is_given_every_provenance_value_of_the_config(tmp_path):
    from coar.run import PROVENANCE

    result = snakemake(tmp_path, "-n", "-p", config=TEST_CONFIG)
    assert result.returncode == 0, result.stderr[-3000:]
    alpha_option = {"merge": "--expect-alpha", "fit": "--expect-alpha", "evaluate": "--train-alpha",
                    "compare": "--train-alpha", "figures": "--train-alpha", "summarize": "--train-alpha"}
    seen = set()
    for line in result.stdout.splitlines():
        step = re.search(r"\bcoar (\w+) --run-dir ", line)
        if step and step[1] in alpha_option:
            seen.add(step[1])
            # output_fn is null in the config: the steps then expect the task's own (not passed).
            wanted = [alpha_option[step[1]], *(f"--{k.replace('_', '-')} " for k in PROVENANCE
                                               if k not in ("alpha", "output_fn"))]
            assert all(option in line for option in wanted), (step[1], line)
    assert seen == set(alpha_option)
