"""Files that cannot lie: corruption, provenance, bad inputs, full disks and leftovers are refused
or cleaned up, each with a message naming the cause (docs/trust.md lists every case)."""

import errno
import fcntl
import json
import os
import shutil
import sys
import uuid

import h5py
import numpy as np
import pytest
import torch

from coar import atomic, h5format
from coar.atomic import DiskFullError, atomic_path, write_json
from coar.h5format import FormatError

N_COMPONENTS, N_EXAMPLES = 6, 4


def shard_meta(**overrides):
    return {
        "seed": 0, "alpha": 0.1, "n_components": N_COMPONENTS, "n_examples": N_EXAMPLES,
        "model_fingerprint": "m", "components_fingerprint": "c", "examples_fingerprint": "e",
        "output_fn": "margin", "ablation": "weight", "precision": "fp32", "coar_version": "0",
        "encoding": h5format.ENCODING, "shard": 0, "row_start": 0, "row_stop": 50,
    } | overrides


def write_shard(path, **overrides):
    meta = shard_meta(**overrides)
    rows = meta["row_stop"] - meta["row_start"]
    rng = np.random.default_rng(0)
    masks = rng.random((rows, N_COMPONENTS)) < 0.3
    outputs = rng.normal(size=(rows, N_EXAMPLES)).astype(np.float32)
    h5format.write_shard(path, masks, outputs, meta)
    return masks, outputs


def flip_a_byte(path, dataset, chunk=0):
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(chunk)
    with open(path, "r+b") as raw:
        raw.seek(info.byte_offset + info.size // 2)
        byte = raw.read(1)
        raw.seek(-1, os.SEEK_CUR)
        raw.write(bytes([byte[0] ^ 0b101]))


# ----------------------------------------------------------------------------- checksums


def test_a_flipped_bit_in_the_outputs_is_refused_naming_file_dataset_and_rows(tmp_path):
    path = tmp_path / "shard-0.h5"
    write_shard(path)
    flip_a_byte(path, "outputs")
    with pytest.raises(FormatError, match=r"shard-0\.h5: dataset 'outputs' rows 0\.\.50 fail their checksum"):
        list(h5format.iter_chunks(path, 1000))


def test_a_flipped_bit_in_the_masks_is_refused(tmp_path):
    path = tmp_path / "shard-0.h5"
    write_shard(path)
    flip_a_byte(path, "masks")
    with pytest.raises(FormatError, match="dataset 'masks'"):
        list(h5format.iter_chunks(path, 1000))


def test_a_flipped_bit_in_the_attribution_weights_is_refused(tmp_path):
    path = tmp_path / "attributions.h5"
    h5format.write_attributions(
        path, np.ones((N_EXAMPLES, N_COMPONENTS)), np.zeros(N_EXAMPLES), np.zeros(N_EXAMPLES),
        [("layer", i, "conv") for i in range(N_COMPONENTS)], [str(i) for i in range(N_EXAMPLES)],
        {"encoding": h5format.ENCODING, "solver": "s", "method": "ols", "n_masks": 10, "ablation": "weight",
         "output_fn": "margin", "precision": "fp32", "model_fingerprint": "m", "components_fingerprint": "c",
         "examples_fingerprint": "e"},
    )
    flip_a_byte(path, "weight")
    with pytest.raises(FormatError, match="dataset 'weight'"):
        h5format.read_attributions(path)


def test_a_shard_without_checksums_is_refused(tmp_path):
    path = tmp_path / "shard-0.h5"
    _, outputs = write_shard(path)
    with h5py.File(path, "r+") as f:
        del f["outputs"]
        f.create_dataset("outputs", data=outputs)
    with pytest.raises(FormatError, match="'outputs' carries no checksum"):
        h5format.read_shard_meta(path)


# ----------------------------------------------------------------------------- full disk


def test_a_full_disk_while_writing_json_names_the_path_and_the_bytes_needed(tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(tmp_path), "write_text", full)
    with pytest.raises(DiskFullError, match=r"disk full at .*evaluation\.json: 15 bytes needed"):
        write_json(tmp_path / "evaluation.json", {"a": 1.0})
    assert os.listdir(tmp_path) == []


def test_a_full_disk_reported_by_hdf5_only_in_words_is_recognised(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError("Can't decrement id ref count (errno = 28, error message = 'No space left on device')")

    monkeypatch.setattr(h5format, "_create_rows", full)
    with pytest.raises(DiskFullError, match=r"disk full at .*shard-0\.h5: \d+ bytes needed"):
        write_shard(tmp_path / "shard-0.h5")
    assert os.listdir(tmp_path) == []


def test_a_full_disk_in_torch_save_is_recognised(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    real_usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: type(real_usage)(100, 100, 0))
    with pytest.raises(DiskFullError, match=r"disk full at .*model\.pt: more than 0 bytes needed, 0 bytes free"):
        with atomic_path(tmp_path / "model.pt") as tmp:
            torch.save({}, tmp)


def test_other_write_errors_are_not_called_a_full_disk(tmp_path):
    with pytest.raises(PermissionError):
        with atomic_path(tmp_path / "x.json"):
            raise PermissionError(errno.EACCES, "denied")


# ----------------------------------------------------------------------------- leftovers


def test_the_temporary_file_of_a_killed_write_is_removed_by_the_next_write(tmp_path):
    stale = tmp_path / f".dataset.h5.{uuid.uuid4().hex}.tmp"
    stale.write_bytes(b"half a dataset")
    other = tmp_path / f".other.h5.{uuid.uuid4().hex}.tmp"
    other.write_bytes(b"another target's temporary")
    write_shard(tmp_path / "dataset.h5")
    assert not stale.exists()
    assert other.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["dataset.h5", other.name])


def test_the_temporary_file_of_a_write_in_progress_is_kept(tmp_path):
    live = tmp_path / f".evaluation.json.{uuid.uuid4().hex}.tmp"
    live.write_text("being written")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        write_json(tmp_path / "evaluation.json", {"ok": True})
        assert live.exists()
    finally:
        os.close(fd)
    write_json(tmp_path / "evaluation.json", {"ok": True})
    assert not live.exists()


def test_strict_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json(tmp_path / "x.json", {"mean_correlation": float("nan")})
    assert os.listdir(tmp_path) == []
    write_json(tmp_path / "x.json", {"mean_correlation": None})
    assert json.loads((tmp_path / "x.json").read_text()) == {"mean_correlation": None}


def test_remove_stale_temporaries_ignores_names_that_only_look_alike(tmp_path):
    lookalike = tmp_path / ".dataset.h5.notauuid.tmp"
    lookalike.write_text("")
    assert atomic.remove_stale_temporaries(tmp_path / "dataset.h5") == []
    assert lookalike.exists()


# ----------------------------------------------------------------------------- provenance

from coar import steps  # noqa: E402
from coar.run import Run  # noqa: E402
from coar.task import load_task  # noqa: E402

TASK = "tests.tasks_for_tests:task"
RUN = {"alpha": 0.1, "seed": 3, "ablation": "weight", "output_fn": "margin", "precision": "fp32"}
COLLECT = {"masks_per_pass": 4, "max_batch": 64, "device": "cpu"}
TASK_OF_RUN = {"task_spec": TASK, "task_params": {"n": 6}}
"""The config's task, as the workflow passes it to the steps that reopen it (the run_dir fixture's)."""


def collect(run_dir, out, *, masks=40, shard=0, shards=1, **changes):
    settings = {k: v for k, v in RUN.items() if k != "precision"} | changes
    steps.collect(run_dir, out, **TASK_OF_RUN, shard=shard, shards=shards, masks=masks, **settings, **COLLECT)


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    steps.prepare(TASK, {"n": 6}, ["linear"], ["*"], [], run)
    return run


def collect_and_fit(run_dir) -> list:
    """Two shards of a prepared run (run_dir), merged and fitted with the run's settings, in-process
    (no workflow): the shards."""
    shards = [run_dir / f"shards/shard-{i}.h5" for i in range(2)]
    for i, path in enumerate(shards):
        collect(run_dir, path, shard=i, shards=2)
    steps.merge(run_dir, shards, run_dir / "dataset.h5", 40, Run(run_dir).provenance(**RUN))
    steps.fit(run_dir, run_dir / "dataset.h5", run_dir / "attributions.h5", method="ridge", backend="numpy",
              chunk_rows=16, expected=Run(run_dir).provenance(**RUN))
    return shards


@pytest.fixture
def collected(run_dir):
    """Two shards, merged and fitted with the run's settings."""
    return run_dir, collect_and_fit(run_dir)


@pytest.mark.parametrize("key, config_value, recorded", [
    ("alpha", 0.2, "0.1"), ("seed", 4, "3"), ("ablation", "zero", "'weight'"),
    ("output_fn", "lm_margin", "'margin'"), ("precision", "bf16", "'fp32'"),
])
def test_merge_refuses_shards_made_otherwise_than_the_config_naming_key_and_both_values(collected, key, config_value,
                                                                                          recorded):
    run_dir, shards = collected
    expected = Run(run_dir).provenance(**(RUN | {key: config_value}))
    with pytest.raises(FormatError, match=rf"made with {key} {recorded} but this run has {config_value!r}"):
        steps.merge(run_dir, shards, run_dir / "other.h5", 40, expected)
    assert not (run_dir / "other.h5").exists()


def test_merge_by_default_expects_the_tasks_own_output_function(collected, tmp_path):
    run_dir, _ = collected
    shard = tmp_path / "lm.h5"
    collect(run_dir, shard, output_fn="tests.tasks_for_tests:constant_output")
    with pytest.raises(FormatError, match="output_fn 'tests.tasks_for_tests:constant_output' but this run has 'margin'"):
        steps.merge(run_dir, [shard], tmp_path / "d.h5", 40, Run(run_dir).provenance())


def test_fit_refuses_a_dataset_made_at_another_alpha(collected):
    run_dir, _ = collected
    with pytest.raises(FormatError, match="alpha 0.1 but this run has 0.3"):
        steps.fit(run_dir, run_dir / "dataset.h5", run_dir / "a.h5", method="ridge", backend="numpy", chunk_rows=16,
                  expected=Run(run_dir).provenance(**(RUN | {"alpha": 0.3})))


def test_attributions_record_how_their_data_were_made(collected):
    run_dir, _ = collected
    attrs = h5format.read_attributions(run_dir / "attributions.h5").attrs
    assert {k: attrs[k] for k in RUN} == RUN
    assert attrs["n_masks"] == 40


def test_evaluation_and_summary_report_the_recorded_values_and_refuse_other_ones(collected):
    run_dir, _ = collected
    heldout = run_dir / "heldout.h5"
    collect(run_dir, heldout, masks=20, purpose="heldout")
    expected = Run(run_dir).provenance(**{k: v for k, v in RUN.items() if k != "alpha"})
    with pytest.raises(FormatError, match="alpha 0.1 but this run has 0.2"):
        steps.evaluate(run_dir, run_dir / "attributions.h5", {0.2: heldout}, 0.2, run_dir / "e.json", expected)
    with pytest.raises(FormatError, match="seed 3 but this run has 9"):
        steps.evaluate(run_dir, run_dir / "attributions.h5", {0.1: heldout}, 0.1, run_dir / "e.json",
                       expected | {"seed": 9})
    result = steps.evaluate(run_dir, run_dir / "attributions.h5", {0.1: heldout}, 0.1, run_dir / "evaluation.json",
                            expected)
    assert {k: result[k] for k in RUN} == RUN
    summary = steps.summarize(run_dir, run_dir / "evaluation.json", [], run_dir / "summary.md", run_dir / "plots" / "c.png")
    assert "at alpha = 0.1, seed 3" in summary
    assert "ablation: weight; output function: `margin`; precision: fp32" in summary


# A task whose examples differ from prepare's is refused by every step that reopens the run:
# tests/test_saved_task.py::test_changed_tensor_examples_are_refused_naming_the_fingerprint.


# ----------------------------------------------------------------------------- non-finite values

INF_FN = "tests.tasks_for_tests:margin_inf_for_class_0"


def class_0_examples(run_dir):
    task = load_task(TASK, {"n": 6})
    return [task.example_ids[i] for i in (task.labels == 0).nonzero().flatten().tolist()]


def test_collect_refuses_non_finite_outputs_naming_examples_and_masks(run_dir):
    ids = class_0_examples(run_dir)
    assert ids, "the test task needs an example of class 0"
    with pytest.raises(ValueError, match=rf"non-finite values .* in 40 masks \(rows\) \[0, 1, 2, 3, 4, \.\.\.\] "
                                         rf"and {len(ids)} examples \[{', '.join(ids)}\]"):
        collect(run_dir, run_dir / "shard.h5", output_fn=INF_FN)
    assert not (run_dir / "shard.h5").exists()


def test_evaluate_refuses_non_finite_heldout_outputs(collected):
    run_dir, _ = collected
    finite, heldout = run_dir / "finite.h5", run_dir / "heldout.h5"
    collect(run_dir, finite, masks=20, purpose="heldout")
    (masks, outputs), = h5format.iter_chunks(finite, 1000)
    outputs[3, 1] = np.inf  # written by hand: collect refuses such values
    h5format.write_shard(heldout, masks, outputs, h5format.read_shard_meta(finite))
    with pytest.raises(ValueError, match="heldout.h5 holds .* non-finite values"):
        steps.evaluate(run_dir, run_dir / "attributions.h5", {0.1: heldout}, 0.1, run_dir / "e.json", {})
    assert not (run_dir / "e.json").exists()


def test_undefined_correlations_are_null_and_counted_never_nan(collected):
    run_dir, _ = collected
    fn = "tests.tasks_for_tests:constant_output"
    heldout = run_dir / "heldout.h5"
    collect(run_dir, heldout, masks=20, purpose="heldout", output_fn=fn)
    # the attributions were fitted on margins; scored against constant outputs every correlation is undefined
    h5format_expect = Run(run_dir).provenance(seed=3, ablation="weight", precision="fp32", output_fn="margin")
    with pytest.raises(FormatError, match="output_fn"):
        steps.evaluate(run_dir, run_dir / "attributions.h5", {0.1: heldout}, 0.1, run_dir / "e.json", h5format_expect)
    result = steps.evaluate(run_dir, run_dir / "attributions.h5", {0.1: heldout}, 0.1, run_dir / "e.json", {})
    text = (run_dir / "e.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in evaluation.json"))
    assert result["mean_correlation"] is None and result["median_correlation"] is None
    assert result["undefined_correlations"] == result["by_alpha"]["0.1"]["undefined_correlations"] == 6
    summary = steps.summarize(run_dir, run_dir / "e.json", [], run_dir / "summary.md", run_dir / "plots" / "c.png")
    assert "undefined" in summary


def test_baseline_refuses_non_finite_attributions(run_dir):
    with pytest.raises(ValueError, match="baseline loo gave .* non-finite values"):
        steps.baseline(run_dir, run_dir / "loo.h5", **TASK_OF_RUN, method="loo", ablation="weight", output_fn=INF_FN,
                       masks_per_pass=4, max_batch=64, n_steps=4, device="cpu")
    assert not (run_dir / "loo.h5").exists()


# ----------------------------------------------------------------------------- refused before any work


def test_prepare_refuses_ols_with_no_more_masks_than_components(tmp_path):
    with pytest.raises(ValueError, match=r"config key 'masks': 11 masks for 11 components.*masks >= 12"):
        steps.prepare(TASK, {}, ["linear"], ["*"], [], tmp_path / "run", masks=11, method="ols")
    assert not (tmp_path / "run" / "prepare.json").exists()
    steps.prepare(TASK, {}, ["linear"], ["*"], [], tmp_path / "run", masks=11, method="ridge")


from pathlib import Path  # noqa: E402
import subprocess  # noqa: E402

import yaml  # noqa: E402
from snakemake.utils import validate  # noqa: E402

from coar.config import ConfigError, check_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def config_with(**changes):
    """The default config with `changes`, after the schema (which fills in defaults)."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text()) | changes
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return config


@pytest.mark.parametrize("changes, message", [
    ({"masks": 400.0}, r"config key 'masks': 400.0 must be a whole number .*\(e.g. 400\)"),
    ({"solver": {"chunk_rows": 64.0}}, r"config key 'solver.chunk_rows': 64.0 must be a whole number"),
    ({"run": "."}, r"config key 'run': '\.' is not a run name.*not '\.' or '\.\.'"),
    ({"run": ".."}, r"config key 'run': '\.\.' is not a run name"),
    ({"run": "a/b"}, r"config key 'run': 'a/b' is not a run name.*no slashes"),
    ({"task": {"spec": "tests.tasks_for_tests:no_such_function", "params": {}}},
     r"config key 'task.spec': .*has no attribute 'no_such_function'"),
    ({"task": {"spec": "tests.tasks_for_tests:NOT_CALLABLE", "params": {}}}, r"config key 'task.spec': .*not callable"),
    ({"task": {"spec": "tests.tasks_for_tests:task$(touch marker)", "params": {}}},
     r"config key 'task.spec': .*is not 'package.module'"),
    ({"output_fn": "margin; touch marker"}, r"config key 'output_fn': .*is not 'package.module'"),
    ({"output_fn": "tests.tasks_for_tests:nothing_here"}, r"config key 'output_fn': .*has no attribute"),
])
def test_check_config_refuses_at_start_up_naming_the_key_and_the_fix(changes, message):
    config = config_with() | changes  # after the schema: check_config must refuse these on its own
    with pytest.raises(ConfigError, match=message):
        check_config(config)


def test_the_default_config_passes_check_config():
    check_config(config_with())


def test_device_cuda_without_a_gpu_is_refused_at_start_up(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="config key 'device': 'cuda' was asked for but torch sees no GPU"):
        check_config(config_with(device="cuda"))


def test_the_cupy_backend_without_cupy_or_a_gpu_is_refused_at_start_up(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cupy" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match="config key 'solver.backend': .*cupy is not installed"):
        check_config(config_with(solver={"backend": "cupy"}))


# ----------------------------------------------------------------------------- shell injection


def snakemake(workdir, config, *targets):
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(["snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory", str(workdir),
                           "--cores", "2", *targets, "--configfile", str(workdir / "config.yaml")],
                          capture_output=True, text=True, env=env, cwd=workdir)


TINY = {"run": "inj", "task": {"spec": TASK, "params": {"n": 4}}, "components": {"kinds": ["linear"]},
        "alpha": 0.1, "masks": 40, "solver": {"method": "ridge"}}


@pytest.mark.parametrize("key, change", [
    ("config key 'task.spec'", {"task": {"spec": TASK + "$(touch {marker})", "params": {}}}),
    ("config key 'output_fn'", {"output_fn": "margin$(touch {marker})"}),
    ("config key 'run'", {"run": "inj$(touch {marker})"}),
])
def test_a_command_substitution_in_a_name_is_refused_and_never_runs(tmp_path, key, change):
    marker = tmp_path / "marker"
    config = json.loads(json.dumps(TINY | change).replace("{marker}", str(marker)))
    result = snakemake(tmp_path, config, "results/inj/prepare.json")
    assert result.returncode != 0
    assert key in result.stdout + result.stderr
    assert not marker.exists()
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_command_substitution_in_free_text_reaches_the_step_verbatim_and_never_runs(tmp_path):
    markers = [tmp_path / f"marker{i}" for i in range(3)]
    config = TINY | {
        "task": {"spec": TASK, "params": {"n": 4, "note": f"$(touch {markers[0]})"}},
        "components": {"kinds": ["linear"], "include": ["*", f"`touch {markers[1]}`"],
                       "exclude": [f"x; touch {markers[2]}"]},
    }
    result = snakemake(tmp_path, config, "results/inj/prepare.json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not any(m.exists() for m in markers)
    info = json.loads((tmp_path / "results" / "inj" / "prepare.json").read_text())
    assert info["task_params"]["note"] == f"$(touch {markers[0]})"


# ----------------------------------------------------------------------------- the task comes from the config

from coar.cli import main  # noqa: E402
from coar.report import FigurePaths  # noqa: E402


def plant_task_payload(run_dir, marker):
    """What a hostile results folder would hold: prepare.json naming a function that runs a command."""
    info = json.loads((run_dir / "prepare.json").read_text())
    info |= {"task": "subprocess:run", "task_params": {"touch": 0, str(marker): 0}}
    (run_dir / "prepare.json").write_text(json.dumps(info))


def test_the_planted_payload_runs_when_its_task_is_loaded_so_the_refusals_below_can_fail(tmp_path):
    marker = tmp_path / "marker"
    with pytest.raises(TypeError, match="not a coar.task.Task"):
        load_task("subprocess:run", {"touch": 0, str(marker): 0})
    assert marker.exists()


@pytest.mark.parametrize("command", [
    ["collect", "--masks", "8", "--alpha", "0.1", "--device", "cpu"],
    ["baseline", "--method", "loo", "--device", "cpu"],
])
def test_steps_that_reopen_the_task_refuse_a_run_folder_naming_another_task_and_never_run_it(
        run_dir, tmp_path, capsys, command):
    marker = tmp_path / "marker"
    plant_task_payload(run_dir, marker)
    out = tmp_path / "out.h5"
    code = main([*command, "--run-dir", str(run_dir), "--out", str(out), "--task", TASK, "--task-params", '{"n": 6}'])
    err = capsys.readouterr().err
    assert code == 1
    assert "names task 'subprocess:run'" in err and f"the config names '{TASK}'" in err
    assert not marker.exists() and not out.exists()


def test_other_task_params_than_the_configs_are_refused_naming_both(run_dir):
    with pytest.raises(RuntimeError, match=r'params \{"n": 6\} but the config names .* with params \{"n": 7\}'):
        Run(run_dir).reopen(TASK, {"n": 7})


def test_steps_that_only_read_results_never_run_the_task_named_by_the_run_folder(collected, tmp_path):
    run_dir, shards = collected
    heldout = tmp_path / "heldout.h5"
    collect(run_dir, heldout, masks=20, purpose="heldout")
    marker = tmp_path / "marker"
    plant_task_payload(run_dir, marker)
    expected = Run(run_dir).provenance(**RUN)
    steps.merge(run_dir, shards, tmp_path / "d.h5", 40, expected)
    steps.fit(run_dir, tmp_path / "d.h5", tmp_path / "a.h5", method="ridge", backend="numpy", chunk_rows=16,
              expected=expected)
    steps.evaluate(run_dir, tmp_path / "a.h5", {0.1: heldout}, 0.1, tmp_path / "e.json", expected)
    steps.compare(run_dir, {"coar": tmp_path / "a.h5"}, {0.1: heldout}, 0.1, tmp_path / "c.json", tmp_path / "c.md",
                  expected)
    steps.summarize(run_dir, tmp_path / "e.json", [], tmp_path / "s.md", tmp_path / "s.png", 0.1, expected)
    steps.figures(run_dir, tmp_path / "c.json", {"coar": tmp_path / "a.h5"}, {0.1: heldout}, [],
                  FigurePaths(*(tmp_path / f"{i}.png" for i in range(5))), 0.1, expected)
    assert not marker.exists()


# ----------------------------------------------------------------------------- list-valued options


@pytest.mark.slow
def test_a_pattern_with_a_comma_reaches_prepare_whole_and_selects_its_modules(tmp_path):
    config = TINY | {"components": {"kinds": ["linear"], "include": ["layers.[0,3]"], "exclude": []}}
    result = snakemake(tmp_path, config, "results/inj/prepare.json")
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads((tmp_path / "results" / "inj" / "prepare.json").read_text())
    assert info["n_components"] == 8 + 3  # layers.0 (Linear 4->8) and layers.3 (Linear 8->3)


# ----------------------------------------------------------------------------- names, ids and provenance of every file read


def flip_a_byte_of(path, text: bytes, replacement: bytes):
    """Overwrite the first occurrence of `text` in the raw file (a string no checksum of HDF5 covers)."""
    raw = path.read_bytes()
    assert raw.count(text) >= 1
    i = raw.index(text)
    path.write_bytes(raw[:i] + replacement + raw[i + len(text):])


@pytest.fixture
def evaluated(collected, tmp_path):
    run_dir, _ = collected
    heldout = tmp_path / "heldout.h5"
    collect(run_dir, heldout, masks=20, purpose="heldout")
    return run_dir, heldout, Run(run_dir).provenance(**{k: v for k, v in RUN.items() if k != "alpha"})


def read_by_every_reader(run_dir, attributions, heldout, expected, tmp_path):
    """evaluate, then compare, on the given files (raising what the first refusal raises)."""
    steps.evaluate(run_dir, attributions, {0.1: heldout}, 0.1, tmp_path / "e.json", expected)
    steps.compare(run_dir, {"coar": attributions}, {0.1: heldout}, 0.1, tmp_path / "c.json", tmp_path / "c.md", expected)


def test_a_flipped_byte_in_a_component_name_is_refused_naming_file_and_field(evaluated, tmp_path):
    run_dir, heldout, expected = evaluated
    flip_a_byte_of(run_dir / "attributions.h5", b"layers.3", b"layers.2")
    with pytest.raises(FormatError, match=r"attributions.h5: dataset 'components/module' differs from its recorded SHA"):
        steps.evaluate(run_dir, run_dir / "attributions.h5", {0.1: heldout}, 0.1, tmp_path / "e.json", expected)
    with pytest.raises(FormatError, match=r"dataset 'components/module'"):
        steps.compare(run_dir, {"coar": run_dir / "attributions.h5"}, {0.1: heldout}, 0.1, tmp_path / "c.json",
                      tmp_path / "c.md", expected)
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("field, change, message", [
    ("components", lambda table, ids: ([("layers.9", *table[0][1:]), *table[1:]], ids),
     r"components row 0 is \('layers.9', 0, 'linear'\) but this run's components.json has \('layers.0', 0, 'linear'\)"),
    ("example_ids", lambda table, ids: (table, [*ids[:-1], "someone else"]),
     r"example_ids row 5 is 'someone else' but this run's example_ids.json has"),
])
def test_names_and_ids_that_differ_from_the_runs_are_refused_even_with_a_valid_checksum(evaluated, tmp_path, field,
                                                                                          change, message):
    run_dir, heldout, expected = evaluated
    found = h5format.read_attributions(run_dir / "attributions.h5")
    table, ids = change(found.components, found.example_ids)
    other = tmp_path / "other.h5"
    h5format.write_attributions(other, found.weight, found.bias, found.lam, table, ids,
                                {k: v for k, v in found.attrs.items() if k not in ("n_examples", "n_components")})
    with pytest.raises(FormatError, match=message):
        read_by_every_reader(run_dir, other, heldout, expected, tmp_path)


@pytest.mark.parametrize("key, value, recorded", [
    ("alpha", 0.05, "0.1"), ("seed", 9, "3"), ("precision", "bf16", "'fp32'"), ("ablation", "zero", "'weight'"),
])
def test_compare_checks_the_full_provenance_of_coars_attributions_naming_key_and_both_values(evaluated, tmp_path, key,
                                                                                               value, recorded):
    run_dir, heldout, expected = evaluated
    train_alpha = value if key == "alpha" else 0.1
    expected = expected | ({} if key == "alpha" else {key: value})
    with pytest.raises(FormatError, match=rf"attributions.h5 was made with {key} {recorded} but this run has {value!r}"):
        steps.compare(run_dir, {"coar": run_dir / "attributions.h5"}, {train_alpha: heldout}, train_alpha,
                      tmp_path / "c.json", tmp_path / "c.md", expected)


def test_a_baselines_file_is_checked_by_what_applies_to_it_and_must_be_of_its_method(evaluated, tmp_path):
    run_dir, heldout, expected = evaluated
    loo = tmp_path / "loo.h5"
    steps.baseline(run_dir, loo, **TASK_OF_RUN, method="loo", ablation="weight", output_fn=None, masks_per_pass=4,
                   max_batch=64, n_steps=4, device="cpu")
    files = {"coar": run_dir / "attributions.h5", "loo": loo}
    steps.compare(run_dir, files, {0.1: heldout}, 0.1, tmp_path / "c.json", tmp_path / "c.md", expected)  # fp32, no alpha
    with pytest.raises(FormatError, match=r"loo.h5 was made with ablation 'weight' but this run has 'zero'"):
        steps.compare(run_dir, {"loo": loo}, {0.1: heldout}, 0.1, tmp_path / "c.json", tmp_path / "c.md",
                      expected | {"ablation": "zero"})
    with pytest.raises(FormatError, match=r"loo.h5 holds attributions of loo, not of grad_x_param"):
        steps.compare(run_dir, {"coar": run_dir / "attributions.h5", "grad_x_param": loo}, {0.1: heldout}, 0.1,
                      tmp_path / "c.json", tmp_path / "c.md", expected)


def test_figures_check_the_provenance_of_the_heldout_files_they_read(evaluated, tmp_path):
    run_dir, heldout, expected = evaluated
    steps.compare(run_dir, {"coar": run_dir / "attributions.h5"}, {0.1: heldout}, 0.1, tmp_path / "c.json",
                  tmp_path / "c.md", expected)
    paths = FigurePaths(*(tmp_path / f"{i}.png" for i in range(5)))
    other_seed = tmp_path / "other-seed.h5"
    collect(run_dir, other_seed, masks=20, purpose="heldout", seed=4)
    with pytest.raises(FormatError, match=r"other-seed.h5 was made with seed 4 but this run has 3"):
        steps.figures(run_dir, tmp_path / "c.json", {"coar": run_dir / "attributions.h5"}, {0.1: other_seed}, [],
                      paths, 0.1, expected)
    assert not any(p.exists() for p in paths)


# ----------------------------------------------------------------------------- results present only their own config


def test_summarize_refuses_an_evaluation_made_with_another_config_naming_key_and_both_values(evaluated, tmp_path):
    run_dir, heldout, expected = evaluated
    steps.evaluate(run_dir, run_dir / "attributions.h5", {0.1: heldout}, 0.1, tmp_path / "e.json", expected)
    with pytest.raises(FormatError, match=r"e.json was made with alpha 0.1 but this run has 0.2"):
        steps.summarize(run_dir, tmp_path / "e.json", [], tmp_path / "summary.md", tmp_path / "c.png", 0.2, expected)
    with pytest.raises(FormatError, match=r"e.json was made with seed 3 but this run has 5"):
        steps.summarize(run_dir, tmp_path / "e.json", [], tmp_path / "summary.md", tmp_path / "c.png", 0.1,
                        expected | {"seed": 5})
    assert not (tmp_path / "summary.md").exists()


def test_figures_refuse_a_comparison_made_with_another_config(evaluated, tmp_path):
    run_dir, heldout, expected = evaluated
    steps.compare(run_dir, {"coar": run_dir / "attributions.h5"}, {0.1: heldout}, 0.1, tmp_path / "c.json",
                  tmp_path / "c.md", expected)
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["made_with"] == expected | {"alpha": 0.1, "method": "ridge", "n_masks": 40}
    (tmp_path / "c.json").write_text(json.dumps(result | {"made_with": expected | {"alpha": 0.1, "seed": 4}}))
    paths = FigurePaths(*(tmp_path / f"{i}.png" for i in range(5)))
    with pytest.raises(FormatError, match=r"c.json was made with seed 4 but this run has 3"):
        steps.figures(run_dir, tmp_path / "c.json", {"coar": run_dir / "attributions.h5"}, {0.1: heldout}, [], paths,
                      0.1, expected)
    assert not any(p.exists() for p in paths)


@pytest.mark.slow
def test_a_results_folder_copied_under_a_changed_alpha_is_redone_even_with_mtime_triggers(tmp_path):
    first, fresh = tmp_path / "first", tmp_path / "fresh"
    first.mkdir()
    target = "results/inj/summary.md"
    result = snakemake(first, TINY, target)
    assert result.returncode == 0, result.stderr[-3000:]
    fresh.mkdir()
    shutil.copytree(first / "results", fresh / "results")  # no .snakemake: a fresh checkout knows no params
    result = snakemake(fresh, TINY | {"alpha": 0.2}, target, "--rerun-triggers", "mtime")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads((fresh / "results" / "inj" / "evaluation.json").read_text())
    assert evaluation["alpha"] == 0.2
    assert "at alpha = 0.2" in (fresh / target).read_text()
    again = snakemake(fresh, TINY | {"alpha": 0.1}, target, "--rerun-triggers", "mtime")  # back to the first config
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((fresh / "results" / "inj" / "evaluation.json").read_text())["alpha"] == 0.1


# ----------------------------------------------------------------------------- seams


def test_an_installed_package_finds_the_config_schema_without_the_source_tree(tmp_path):
    import tomllib

    site = tmp_path / "site"
    shutil.copytree(REPO / "coar", site / "coar", symlinks=False)  # as a built package: links become their content
    check = ("import yaml; from snakemake.utils import validate; from coar.config import SCHEMA, check_config; "
             "config = yaml.safe_load(open({!r})); validate(config, SCHEMA); check_config(config); print(SCHEMA)").format(
                 str(REPO / "config" / "config.yaml"))
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(site / "coar" / "config.schema.yaml")
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "config.schema.yaml" in package_data["coar"]
    assert (REPO / "coar" / "config.schema.yaml").read_text() == (REPO / "workflow/schemas/config.schema.yaml").read_text()


def test_evaluate_compare_and_figures_name_the_training_alpha_and_merge_and_fit_the_expected_one(evaluated, tmp_path):
    run_dir, heldout, _ = evaluated
    assert main(["evaluate", "--run-dir", str(run_dir), "--attributions", str(run_dir / "attributions.h5"),
                 "--train-alpha", "0.1", "--heldout", f"0.1={heldout}", "--seed", "3",
                 "--out", str(tmp_path / "e.json")]) == 0
    assert main(["fit", "--run-dir", str(run_dir), "--data", str(run_dir / "dataset.h5"), "--expect-alpha", "0.2",
                 "--method", "ridge", "--out", str(tmp_path / "a.h5")]) == 1
    with pytest.raises(SystemExit):  # --alpha is collect's alone: the alpha masks are drawn at
        main(["evaluate", "--run-dir", str(run_dir), "--attributions", "a.h5", "--alpha", "0.1",
              "--heldout", f"0.1={heldout}", "--out", "e.json"])
