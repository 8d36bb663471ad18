"""`coar.open`, `coar show` and `coar export` on a finished workflow run (the tiny run), and on a run
made in-process by the steps (the quick loop's)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import coar
from coar import h5format, steps
from coar.cli import main
from tests.test_trust import TASK, collect_and_fit


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run / "results" / "tiny"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A run made in-process by coar's steps, no workflow (so in the quick loop): the test task's
    6 examples and its linear layers' units, 80 masks, fitted."""
    run = tmp_path_factory.mktemp("small") / "run"
    steps.prepare(TASK, {"n": 6}, ["linear"], ["*"], [], run)
    collect_and_fit(run)
    return run


def test_open_reads_the_runs_attributions_with_its_components_and_ids(run_dir):
    result = coar.open(run_dir)
    stored = h5format.read_attributions(run_dir / "attributions.h5")
    np.testing.assert_array_equal(result.weight, stored.weight)
    assert result.example_ids == tuple(stored.example_ids)
    assert [(c.module, c.unit, c.kind) for c in result.components] == stored.components
    assert result.info["run"] == "tiny" and result.info["n_masks"] == stored.attrs["n_masks"]


def test_open_refuses_attributions_made_for_another_run(run_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("prepare.json", "components.json", "example_ids.json"):
        (other / name).write_bytes((run_dir / name).read_bytes())
    text = (other / "prepare.json").read_text()
    (other / "prepare.json").write_text(text.replace('"model_fingerprint": "', '"model_fingerprint": "0'))
    (other / "attributions.h5").write_bytes((run_dir / "attributions.h5").read_bytes())
    with pytest.raises(h5format.FormatError, match="model_fingerprint"):
        coar.open(other)


def test_open_says_what_to_run_when_the_run_is_not_fitted(run_dir, tmp_path):
    for name in ("prepare.json", "components.json", "example_ids.json"):
        (tmp_path / name).write_bytes((run_dir / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="not been fitted"):
        coar.open(tmp_path)


def test_show_example_prints_the_top_components_and_verify_the_realised_changes(run_dir, capsys):
    result = coar.open(run_dir)
    example = result.example_ids[2]
    assert main(["show", str(run_dir), "--example", example, "--top", "3", "--verify"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["example", "component", "module", "layer", "unit", "kind", "predicted", "realised"]
    top = result.top(example, 3)
    for line, row in zip(lines[2:5], top):
        fields = line.split()
        assert fields[1] == row.component and float(fields[6]) == pytest.approx(row.predicted, rel=1e-3)
        assert float(fields[7]) * row.predicted > 0  # the run's largest effects are real and of the same sign
    assert lines[5].startswith("all 3 ablated together")


def test_show_example_by_position_prints_its_largest_predicted_effects_with_their_names(small_run, capsys):
    result = coar.open(small_run)
    assert main(["show", str(small_run), "--example", "#1", "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["example", "component", "module", "layer", "unit", "kind", "predicted"]
    for line, row in zip(lines[2:4], result.top(result.example_ids[1], 2)):
        assert line.split()[1] == row.component and float(line.split()[6]) == pytest.approx(row.predicted, rel=1e-3)


def test_show_verify_on_a_users_own_task_runs_it_only_once_named_and_prints_the_realised_changes(small_run, capsys):
    example = ["show", str(small_run), "--example", "#1", "--top", "2", "--verify"]
    assert main(example) == 1
    assert "name it yourself: --task SPEC --task-params JSON" in capsys.readouterr().err
    assert main([*example, "--task", TASK, "--task-params", '{"n": 6}']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[-2:] == ["predicted", "realised"] and lines[4].startswith("all 2 ablated together")


def copy_run_naming_task(run_dir, folder, task: str):
    """A copy of the run whose prepare.json names `task` (as if made by a user's own task code)."""
    folder.mkdir()
    for path in run_dir.iterdir():
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    text = (folder / "prepare.json").read_text()
    (folder / "prepare.json").write_text(text.replace('"coar.tasks.digits:task"', f'"{task}"'))
    return folder


def test_show_verify_runs_a_task_that_is_not_coars_only_when_the_user_names_it(run_dir, tmp_path, capsys):
    marker = tmp_path / "created-by-the-run-folder"
    folder = copy_run_naming_task(run_dir, tmp_path / "run", "subprocess:run")
    text = (folder / "prepare.json").read_text()
    (folder / "prepare.json").write_text(text.replace('"task_params": {', f'"task_params": {{"touch": 0, "{marker}": 0, ', 1))
    example = coar.open(run_dir).example_ids[0]
    assert main(["show", str(folder), "--example", example, "--verify"]) == 1
    assert "not one of the tasks shipped with coar" in capsys.readouterr().err and not marker.exists()
    assert main(["show", str(folder), "--example", example, "--verify", "--task", "coar.tasks.digits:task"]) == 1
    assert "names task 'subprocess:run'" in capsys.readouterr().err and not marker.exists()


def test_show_component_prints_the_examples_it_raises_and_lowers(small_run, capsys):
    result = coar.open(small_run)
    name = result.components[5].name
    assert main(["show", str(small_run), "--component", name, "--top", "2"]) == 0
    out = capsys.readouterr().out
    raises, lowers = result.moved_most(name, 2)
    assert "raises most" in out and "lowers most" in out
    assert all(r.example in out for r in (*raises, *lowers))


def test_show_names_the_closest_components_for_a_misspelt_one(small_run, capsys):
    name = coar.open(small_run).components[0].name
    assert main(["show", str(small_run), "--component", name + "9"]) == 1
    assert f"closest: {name}" in capsys.readouterr().err


def test_export_csv_and_npz_hold_the_runs_weights(small_run, tmp_path):
    result = coar.open(small_run)
    assert main(["export", str(small_run), "--format", "csv", "--out", str(tmp_path / "a.csv")]) == 0
    with open(tmp_path / "a.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["example", "bias", result.components[0].name] and len(rows) == len(result.example_ids) + 1
    np.testing.assert_array_equal(np.array(rows[1:], dtype=object)[:, 2:].astype(np.float32), result.weight)
    assert main(["export", str(small_run), "--format", "npz", "--out", str(tmp_path / "a.npz")]) == 0
    with np.load(tmp_path / "a.npz") as data:
        np.testing.assert_array_equal(data["weight"], result.weight)
        assert data["component_names"].tolist() == [c.name for c in result.components]
        assert data["layers"].tolist() == [c.layer for c in result.components]
        assert json.loads(str(data["info"])) == result.info and result.info["encoding"] == "1 = ablated"


def test_export_parquet_without_pyarrow_says_what_to_install(small_run, tmp_path, capsys):
    pytest.importorskip("pandas")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert main(["export", str(small_run), "--format", "parquet", "--out", str(tmp_path / "a.parquet")]) == 1
        assert "pip install pyarrow" in capsys.readouterr().err
    else:
        assert main(["export", str(small_run), "--format", "parquet", "--out", str(tmp_path / "a.parquet")]) == 0
        import pandas

        assert pandas.read_parquet(tmp_path / "a.parquet").shape[0] == len(coar.open(small_run).example_ids)
