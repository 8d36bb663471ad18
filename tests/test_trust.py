"""Files that cannot lie: corruption, provenance, bad inputs, full disks and leftovers are refused
or cleaned up, each with a message naming the cause (docs/trust.md lists every case)."""

import errno
import fcntl
import json
import os
import shutil
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


def collect(run_dir, out, *, masks=40, shard=0, shards=1, **changes):
    settings = {k: v for k, v in RUN.items() if k != "precision"} | changes
    steps.collect(run_dir, out, shard=shard, shards=shards, masks=masks, **settings, **COLLECT)


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    steps.prepare(TASK, {"n": 6}, ["linear"], ["*"], [], run)
    return run


@pytest.fixture
def collected(run_dir):
    """Two shards, merged and fitted with the run's settings."""
    shards = [run_dir / f"shards/shard-{i}.h5" for i in range(2)]
    for i, path in enumerate(shards):
        collect(run_dir, path, shard=i, shards=2)
    steps.merge(run_dir, shards, run_dir / "dataset.h5", 40, Run(run_dir).provenance(**RUN))
    steps.fit(run_dir, run_dir / "dataset.h5", run_dir / "attributions.h5", method="ridge", backend="numpy",
              chunk_rows=16, expected=Run(run_dir).provenance(**RUN))
    return run_dir, shards


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
        steps.baseline(run_dir, run_dir / "loo.h5", method="loo", ablation="weight", output_fn=INF_FN,
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
                           "--cores", "1", *targets, "--configfile", str(workdir / "config.yaml")],
                          capture_output=True, text=True, env=env, cwd=workdir)


TINY = {"run": "inj", "task": {"spec": TASK, "params": {"n": 4}}, "components": {"kinds": ["linear"]},
        "alpha": 0.1, "masks": 40, "solver": {"method": "ridge"}}


@pytest.mark.parametrize("key, change", [
    ("['task']['spec']", {"task": {"spec": TASK + "$(touch {marker})", "params": {}}}),
    ("['output_fn']", {"output_fn": "margin$(touch {marker})"}),
    ("['run']", {"run": "inj$(touch {marker})"}),
])
def test_a_command_substitution_in_a_name_is_refused_and_never_runs(tmp_path, key, change):
    marker = tmp_path / "marker"
    config = json.loads(json.dumps(TINY | change).replace("{marker}", str(marker)))
    result = snakemake(tmp_path, config, "results/inj/prepare.json")
    assert result.returncode != 0
    assert key in result.stdout + result.stderr
    assert not marker.exists()
    assert not (tmp_path / "results").exists()


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
