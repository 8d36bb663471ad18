"""A run folder holds data only: every step refuses pickles, swapped weights and changed examples.

Each crafted file here carries a pickle payload that writes a marker file when unpickled; the
payload is first shown to work (so the tests can fail), then every `coar` command that reads a
run folder must refuse or ignore it without the marker appearing.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from coar import h5format, saved_task, steps
from coar.cli import main
from coar.run import Run
from coar.fingerprint import model_fingerprint
from coar.task import load_task
from tests import tasks_for_tests

SPEC = "tests.tasks_for_tests:task"


class Payload:
    """Unpickling this writes `marker`: what a malicious results folder would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (self.marker, "payload ran")


def write_pickle_bomb(path: Path, marker: Path) -> None:
    torch.save({"format": 1, "model": Payload(marker)}, path)


def prepare(run: Path, **params) -> dict:
    return steps.prepare(SPEC, {"n": 6, **params}, "linear", ["*"], [], run)


TASK_ARGS = ["--task", SPEC, "--task-params", json.dumps({"n": 6})]
"""The config's task, as the workflow passes it to the steps that reopen the task (prepare's default)."""


def collect_args(run: Path, out: Path, *extra: str) -> list[str]:
    return ["collect", "--run-dir", str(run), "--out", str(out), "--masks", "8", "--alpha", "0.2", "--device", "cpu",
            *TASK_ARGS, *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A complete small run: prepared, collected, merged, fitted, with held-out data."""
    run = tmp_path_factory.mktemp("run")
    prepare(run)
    assert main(collect_args(run, run / "shard-0.h5", "--masks", "40")) == 0
    assert main(["merge", "--run-dir", str(run), "--masks", "40", "--out", str(run / "dataset.h5"),
                 str(run / "shard-0.h5")]) == 0
    assert main(["fit", "--run-dir", str(run), "--data", str(run / "dataset.h5"), "--out",
                 str(run / "attributions.h5"), "--method", "ridge"]) == 0
    assert main(collect_args(run, run / "heldout.h5", "--purpose", "heldout")) == 0
    return run


def test_the_payload_runs_when_unpickled_so_the_refusals_below_can_fail(tmp_path):
    marker = tmp_path / "marker"
    write_pickle_bomb(tmp_path / "task.pt", marker)
    torch.load(tmp_path / "task.pt", weights_only=False)
    assert marker.read_text() == "payload ran"


@pytest.mark.parametrize("poisoned", ["weights.safetensors", "examples.safetensors", "example_ids.json", "task.pt"])
def test_no_coar_command_runs_a_pickle_payload_from_the_run_folder(finished_run, tmp_path, capsys, poisoned):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    marker = tmp_path / "marker"
    write_pickle_bomb(run / poisoned, marker)
    commands = {
        "collect": collect_args(run, tmp_path / "new-shard.h5"),
        "baseline": ["baseline", "--run-dir", str(run), "--method", "loo", "--out", str(tmp_path / "loo.h5"),
                     "--device", "cpu", *TASK_ARGS],
        "fit": ["fit", "--run-dir", str(run), "--data", str(run / "dataset.h5"), "--out", str(tmp_path / "a.h5"),
                "--method", "ridge"],
        "merge": ["merge", "--run-dir", str(run), "--masks", "40", "--out", str(tmp_path / "d.h5"),
                  str(run / "shard-0.h5")],
        "evaluate": ["evaluate", "--run-dir", str(run), "--attributions", str(run / "attributions.h5"), "--train-alpha", "0.2",
                     "--heldout", f"0.2={run / 'heldout.h5'}", "--out", str(tmp_path / "e.json")],
    }
    reads = {"weights.safetensors": {"collect", "baseline"}, "examples.safetensors": {"collect", "baseline"},
             "example_ids.json": {"collect", "fit", "baseline", "evaluate"}, "task.pt": set()}[poisoned]
    for name, args in commands.items():
        code = main(args)
        err = capsys.readouterr().err
        if name in reads:
            assert code == 1 and poisoned in err, (name, err)
        else:
            assert code == 0, (name, err)
        assert not marker.exists(), name


def test_a_run_folder_with_only_an_old_task_pt_is_refused_with_the_reason(tmp_path, capsys):
    prepare(tmp_path)
    (tmp_path / "weights.safetensors").unlink()
    write_pickle_bomb(tmp_path / "task.pt", tmp_path / "marker")
    assert main(collect_args(tmp_path, tmp_path / "s.h5")) == 1
    assert "task.pt of an older coar is no longer read" in capsys.readouterr().err
    assert not (tmp_path / "marker").exists()


def test_weights_of_another_model_are_refused_naming_both_fingerprints(tmp_path, capsys):
    ours, theirs = prepare(tmp_path / "ours"), prepare(tmp_path / "theirs", seed=1)
    assert ours["model_fingerprint"] != theirs["model_fingerprint"]
    shutil.copy(tmp_path / "theirs" / "weights.safetensors", tmp_path / "ours" / "weights.safetensors")
    for args in (collect_args(tmp_path / "ours", tmp_path / "s.h5"),
                 ["baseline", "--run-dir", str(tmp_path / "ours"), "--method", "loo", "--out", str(tmp_path / "l.h5"),
                  *TASK_ARGS]):
        assert main(args) == 1
        err = capsys.readouterr().err
        assert f"model fingerprint {theirs['model_fingerprint']} but prepare.json records {ours['model_fingerprint']}" in err
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "l.h5").exists()


def test_weights_that_do_not_fit_the_model_are_refused(tmp_path, capsys):
    prepare(tmp_path)
    weights = load_file(tmp_path / "weights.safetensors")
    weights["layers.0.weight"] = torch.zeros(3, 3)
    save_file(weights, tmp_path / "weights.safetensors")
    assert main(collect_args(tmp_path, tmp_path / "s.h5")) == 1
    assert "does not fit the model" in capsys.readouterr().err


def test_changed_tensor_examples_are_refused_naming_the_fingerprint(tmp_path, capsys):
    info = prepare(tmp_path)
    arrays = load_file(tmp_path / "examples.safetensors")
    arrays["inputs"][0, 0] += 1
    save_file(arrays, tmp_path / "examples.safetensors")
    assert main(collect_args(tmp_path, tmp_path / "s.h5")) == 1
    err = capsys.readouterr().err
    assert "examples fingerprint" in err and f"prepare.json records {info['examples_fingerprint']}" in err
    assert not (tmp_path / "s.h5").exists()


def test_changed_reference_inputs_are_refused(tmp_path, capsys):
    prepare(tmp_path)
    arrays = load_file(tmp_path / "examples.safetensors")
    arrays["reference_inputs"] *= 2
    save_file(arrays, tmp_path / "examples.safetensors")
    assert main(collect_args(tmp_path, tmp_path / "s.h5", "--ablation", "mean")) == 1
    assert "reference inputs fingerprint" in capsys.readouterr().err


def test_reopen_restores_the_prepared_weights_and_examples(tmp_path):
    info = prepare(tmp_path, n=9)
    prepared = saved_task.reopen(tmp_path, Run(tmp_path).info)
    original = load_task(SPEC, {"n": 9})
    assert model_fingerprint(prepared.model) == info["model_fingerprint"] == model_fingerprint(original.model)
    assert not prepared.model.training
    (x, y), = prepared.examples.batches(100)
    assert torch.equal(x, original.inputs) and torch.equal(y, original.labels)
    assert torch.equal(prepared.reference_inputs, original.reference_inputs)
    assert saved_task.example_ids(tmp_path, 9) == original.example_ids


def test_the_task_function_runs_in_restoring_mode_in_later_steps(tmp_path, monkeypatch):
    steps.prepare("tests.tasks_for_tests:records_restoring", {}, "linear", ["*"], [], tmp_path)
    assert Run(tmp_path).info["task_info"] == {"restoring": False}
    seen = []
    original = tasks_for_tests.records_restoring

    def spy(params: dict):
        task = original(params)
        seen.append(task.info["restoring"])
        return task

    monkeypatch.setattr(tasks_for_tests, "records_restoring", spy)
    saved_task.reopen(tmp_path, Run(tmp_path).info)
    assert seen == [True]


def test_the_digits_task_skips_training_while_restoring():
    params = {"epochs": 1, "width": 0.25}
    restored = load_task("coar.tasks.digits", params, restore=True)
    torch.manual_seed(0)
    from coar.tasks.digits import DigitsResNet
    untrained = DigitsResNet(width=0.25).eval()
    assert model_fingerprint(restored.model) == model_fingerprint(untrained)
    assert model_fingerprint(load_task("coar.tasks.digits", params).model) != model_fingerprint(untrained)


def test_unreadable_example_ids_are_refused_naming_the_file(tmp_path):
    prepare(tmp_path)
    (tmp_path / "example_ids.json").write_text(json.dumps(["a", "a", "b", "c", "d", "e"]))
    with pytest.raises(ValueError, match="example_ids.json must hold 6 unique example ids"):
        saved_task.example_ids(tmp_path, 6)


def test_collect_on_a_restored_task_equals_the_ablated_forward_on_the_original(tmp_path):
    from coar.components import ComponentSet
    from coar.forward import run_masked

    prepare(tmp_path, n=6)
    steps.collect(tmp_path, tmp_path / "s.h5", task_spec=SPEC, task_params={"n": 6}, shard=0, shards=1, masks=8, alpha=0.2, seed=0, ablation="weight",
                  output_fn=None, masks_per_pass=3, max_batch=6, device="cpu")
    (masks, outputs), = h5format.iter_chunks(tmp_path / "s.h5", 100)
    task = load_task(SPEC, {"n": 6})
    expected = run_masked(task.model, ComponentSet.load(tmp_path / "components.json"), masks.astype(bool), task.inputs,
                          task.labels, task.output, masks_per_pass=3, max_batch=6)
    assert np.array_equal(outputs, expected)
