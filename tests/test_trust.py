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
    with pytest.raises(DiskFullError, match=r"disk full at .*task\.pt: more than 0 bytes needed, 0 bytes free"):
        with atomic_path(tmp_path / "task.pt") as tmp:
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
