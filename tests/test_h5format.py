"""Specification of coar.h5format: atomic writes, round trips, and refusals that say what to do."""

import os
import re

import h5py
import numpy as np
import pytest

from coar import h5format
from coar.h5format import (
    ENCODING,
    FormatError,
    atomic_h5,
    check_shard,
    check_shards,
    iter_chunks,
    merge_shards,
    read_attributions,
    read_dataset,
    read_shard_meta,
    write_attributions,
    write_shard,
)
from coar.masks import sample_masks, shard_ranges

N_COMPONENTS, N_EXAMPLES = 12, 5


def run_meta(**overrides):
    return {
        "seed": 0,
        "alpha": 0.05,
        "n_components": N_COMPONENTS,
        "n_examples": N_EXAMPLES,
        "model_fingerprint": "model-aa11",
        "components_fingerprint": "ab12",
        "examples_fingerprint": "ex-33",
        "output_fn": "margin",
        "ablation": "zero_weight",
        "precision": "fp32",
        "coar_version": "0.1.0",
        "encoding": ENCODING,
    } | overrides


def shard_data(shard, start, stop):
    masks = sample_masks(seed=0, shard=shard, rows=stop - start, n_components=N_COMPONENTS, alpha=0.3)
    outputs = np.random.default_rng(shard).normal(size=(stop - start, N_EXAMPLES)).astype(np.float32)
    return masks, outputs


def make_shards(directory, m, n_shards):
    """Write shards tiling 0..m; return their paths and the concatenated masks and outputs."""
    paths, all_masks, all_outputs = [], [], []
    for shard, (start, stop) in enumerate(shard_ranges(m, n_shards)):
        masks, outputs = shard_data(shard, start, stop)
        path = directory / f"shard-{shard:03d}.h5"
        write_shard(path, masks, outputs, run_meta(shard=shard, row_start=start, row_stop=stop))
        paths.append(path)
        all_masks.append(masks)
        all_outputs.append(outputs)
    return paths, np.concatenate(all_masks), np.concatenate(all_outputs)


def refusal(path, *reasons):
    """pytest.raises for a FormatError whose message names `path` and every reason."""
    pattern = "".join(f"(?=.*{re.escape(str(r))})" for r in (path, *reasons))
    return pytest.raises(FormatError, match=re.compile(pattern, re.DOTALL))


@pytest.fixture
def shard_path(tmp_path):
    path = tmp_path / "shards" / "shard-003.h5"
    masks, outputs = shard_data(3, 30, 40)
    write_shard(path, masks, outputs, run_meta(shard=3, row_start=30, row_stop=40))
    return path


# ----------------------------------------------------------------------------- writing


def test_shard_round_trips_data_and_provenance(tmp_path):
    masks, outputs = shard_data(0, 0, 10)
    meta = run_meta(shard=0, row_start=0, row_stop=10)
    write_shard(tmp_path / "s.h5", masks, outputs, meta)
    assert read_shard_meta(tmp_path / "s.h5") == meta
    [(read_masks, read_outputs)] = list(iter_chunks([tmp_path / "s.h5"], chunk_rows=10))
    np.testing.assert_array_equal(read_masks, masks)
    np.testing.assert_array_equal(read_outputs, outputs)
    assert read_masks.dtype == bool and read_outputs.dtype == np.float32


def test_shard_masks_are_compressed_and_both_matrices_chunked_along_rows(shard_path):
    with h5py.File(shard_path, "r") as f:
        assert f["masks"].compression in ("gzip", "lzf")
        assert f["masks"].chunks[1] == N_COMPONENTS
        assert f["outputs"].chunks[1] == N_EXAMPLES
        assert f.attrs["complete"]


def test_numpy_scalar_attributes_round_trip_as_python_values(tmp_path):
    masks, outputs = shard_data(0, 0, 4)
    meta = run_meta(alpha=np.float32(0.25), seed=np.int64(9), shard=0, row_start=0, row_stop=4)
    write_shard(tmp_path / "s.h5", masks, outputs, meta)
    assert check_shard(tmp_path / "s.h5", {"alpha": 0.25, "seed": 9})["alpha"] == 0.25


def test_a_write_that_raises_midway_leaves_neither_the_file_nor_a_temporary(tmp_path):
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_h5(tmp_path / "out.h5") as f:
            f["masks"] = np.zeros((3, 3), bool)
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []


def test_a_failed_rewrite_keeps_the_previous_complete_file(shard_path, monkeypatch):
    before = read_shard_meta(shard_path)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(h5format, "_write_attrs", fail)
    masks, outputs = shard_data(3, 30, 40)
    with pytest.raises(OSError, match="disk full"):
        write_shard(shard_path, masks, outputs, run_meta(seed=99, shard=3, row_start=30, row_stop=40))
    assert read_shard_meta(shard_path) == before
    assert os.listdir(shard_path.parent) == [shard_path.name]


@pytest.mark.parametrize(
    ("masks_rows", "output_cols", "message"),
    [(9, N_EXAMPLES, "masks has shape"), (10, N_EXAMPLES + 1, "outputs has shape")],
)
def test_write_shard_refuses_data_whose_shape_disagrees_with_meta(tmp_path, masks_rows, output_cols, message):
    masks = np.zeros((masks_rows, N_COMPONENTS), bool)
    outputs = np.zeros((10, output_cols), np.float32)
    with pytest.raises(ValueError, match=message):
        write_shard(tmp_path / "s.h5", masks, outputs, run_meta(shard=0, row_start=0, row_stop=10))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("meta_change", "masks_dtype", "message"),
    [
        ({"seed": None}, bool, r"missing \['seed'\]"),
        ({"alpha": 1.5}, bool, "alpha"),
        ({"row_start": 10}, bool, "row_start < row_stop"),
        ({"encoding": "1 = kept"}, bool, "encoding"),
        ({"model_fingerprint": 3}, bool, "model_fingerprint"),
        ({}, np.uint8, "bool"),
    ],
)
def test_write_shard_refuses_invalid_meta_and_non_bool_masks(tmp_path, meta_change, masks_dtype, message):
    meta = run_meta(shard=0, row_start=0, row_stop=10) | meta_change
    meta = {k: v for k, v in meta.items() if v is not None}
    masks = np.zeros((10, N_COMPONENTS), masks_dtype)
    with pytest.raises(ValueError, match=message):
        write_shard(tmp_path / "s.h5", masks, np.zeros((10, N_EXAMPLES), np.float32), meta)


# ----------------------------------------------------------------------------- refusals


def test_a_truncated_file_is_refused(shard_path):
    size = shard_path.stat().st_size
    with open(shard_path, "r+b") as f:
        f.truncate(size // 2)
    with refusal(shard_path, "truncated"):
        read_shard_meta(shard_path)


def test_a_file_that_is_not_hdf5_is_refused(tmp_path):
    path = tmp_path / "shard-000.h5"
    path.write_text("not hdf5")
    with refusal(path, "not an HDF5 file"):
        read_shard_meta(path)


def test_a_missing_file_is_refused(tmp_path):
    with refusal(tmp_path / "shard-000.h5", "does not exist"):
        check_shard(tmp_path / "shard-000.h5", {})


def test_a_file_without_complete_is_refused(shard_path):
    with h5py.File(shard_path, "r+") as f:
        del f.attrs["complete"]
    with refusal(shard_path, "incomplete", "delete it"):
        read_shard_meta(shard_path)


def test_a_shard_made_with_another_fingerprint_is_refused_with_both_values(shard_path):
    with refusal(shard_path, "components_fingerprint", "ab12", "cd34", "delete it or rerun"):
        check_shard(shard_path, {"components_fingerprint": "cd34", "alpha": 0.05})


@pytest.mark.parametrize("key", ["alpha", "seed", "n_components"])
def test_a_shard_made_with_other_run_settings_is_refused(shard_path, key):
    with refusal(shard_path, key):
        check_shard(shard_path, {key: run_meta()[key] + 1})


def test_a_dataset_of_the_wrong_shape_is_refused(shard_path):
    with h5py.File(shard_path, "r+") as f:
        del f["outputs"]
        f["outputs"] = np.zeros((10, N_EXAMPLES + 1), np.float32)
    with refusal(shard_path, "'outputs'", "shape"):
        read_shard_meta(shard_path)


def test_a_file_lacking_provenance_attributes_is_refused(shard_path):
    with h5py.File(shard_path, "r+") as f:
        del f.attrs["output_fn"]
    with refusal(shard_path, "output_fn"):
        read_shard_meta(shard_path)


def test_a_file_of_another_layout_is_refused(tmp_path):
    paths, _, _ = make_shards(tmp_path, m=10, n_shards=1)
    merged = tmp_path / "dataset.h5"
    merge_shards(paths, merged, {}, m=10)
    with refusal(merged, "coar.dataset.v2", "coar.shard.v1"):
        read_shard_meta(merged)
    with refusal(paths[0], "coar.attributions.v2"):
        read_attributions(paths[0])


def test_check_shards_names_the_missing_rows_and_their_neighbours(tmp_path):
    paths, _, _ = make_shards(tmp_path, m=40, n_shards=4)
    with refusal(paths[0], "rows 10..20 are missing", paths[2]):
        check_shards([paths[0], paths[2], paths[3]], {}, m=40)
    with refusal(paths[2], "rows 30..40 are missing"):
        check_shards(paths[:3], {}, m=40)


def test_check_shards_names_overlapping_files(tmp_path):
    paths, _, _ = make_shards(tmp_path, m=40, n_shards=4)
    stray = tmp_path / "stray.h5"
    masks, outputs = shard_data(9, 15, 25)
    write_shard(stray, masks, outputs, run_meta(shard=9, row_start=15, row_stop=25))
    with refusal(stray, "rows 15..20 are in both", paths[1]):
        check_shards([*paths, stray], {}, m=40)


def test_check_shards_refuses_rows_beyond_m(tmp_path):
    paths, _, _ = make_shards(tmp_path, m=40, n_shards=4)
    with refusal(paths[3], "beyond m=35"):
        check_shards(paths, {}, m=35)


def test_check_shards_refuses_shards_from_different_runs(tmp_path):
    paths, _, _ = make_shards(tmp_path, m=20, n_shards=2)
    masks, outputs = shard_data(1, 10, 20)
    write_shard(paths[1], masks, outputs, run_meta(seed=5, shard=1, row_start=10, row_stop=20))
    with refusal(paths[1], paths[0], "different runs", "seed"):
        check_shards(paths, {}, m=20)


def test_check_shards_validates_each_file_against_expect(tmp_path):
    paths, _, _ = make_shards(tmp_path, m=20, n_shards=2)
    with refusal(paths[0], "model_fingerprint"):
        check_shards(paths, {"model_fingerprint": "other"}, m=20)


def test_check_shards_returns_shards_in_row_order(tmp_path):
    paths, _, _ = make_shards(tmp_path, m=30, n_shards=3)
    checked = check_shards(paths[::-1], {}, m=30)
    assert [path for path, _ in checked] == [str(p) for p in paths]
    assert [meta["row_start"] for _, meta in checked] == [0, 10, 20]


# ----------------------------------------------------------------------------- streaming and merging


def test_iter_chunks_over_many_shards_equals_their_concatenation(tmp_path):
    paths, masks, outputs = make_shards(tmp_path, m=103, n_shards=9)  # shards of 11 or 12 rows
    chunks = list(iter_chunks(paths[::-1], chunk_rows=7))  # given out of order
    assert [len(c[0]) for c in chunks] == [7] * 14 + [5]
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), masks)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), outputs)


def test_iter_chunks_validates_before_yielding(tmp_path):
    paths, _, _ = make_shards(tmp_path, m=30, n_shards=3)
    with refusal(paths[2], "rows 10..20 are missing"):
        iter_chunks([paths[0], paths[2]], chunk_rows=4)


def test_merged_dataset_holds_all_rows_and_run_attributes(tmp_path):
    paths, masks, outputs = make_shards(tmp_path, m=53, n_shards=5)
    merged = tmp_path / "dataset.h5"
    merge_shards(paths, merged, {"alpha": 0.05}, m=53)
    read_masks, read_outputs, attrs = read_dataset(merged, {"components_fingerprint": "ab12"})
    np.testing.assert_array_equal(read_masks, masks)
    np.testing.assert_array_equal(read_outputs, outputs)
    assert attrs == run_meta() | {"m": 53, "n_shards": 5}
    with h5py.File(merged, "r") as f:  # other tools read the virtual datasets directly
        assert f["masks"].is_virtual and f["outputs"].is_virtual
        np.testing.assert_array_equal(f["outputs"][()], outputs)


def test_iter_chunks_reads_the_merged_dataset_too(tmp_path):
    paths, masks, outputs = make_shards(tmp_path, m=23, n_shards=2)
    merge_shards(paths, tmp_path / "dataset.h5", {}, m=23)
    chunks = list(iter_chunks(tmp_path / "dataset.h5", chunk_rows=6))
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), masks)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), outputs)


def test_merge_refuses_incomplete_shards_and_writes_nothing(tmp_path):
    paths, _, _ = make_shards(tmp_path, m=30, n_shards=3)
    with refusal(paths[1], "rows 0..10 are missing"):
        merge_shards(paths[1:], tmp_path / "dataset.h5", {}, m=30)
    assert not (tmp_path / "dataset.h5").exists()


def test_read_dataset_refuses_another_run(tmp_path):
    paths, _, _ = make_shards(tmp_path, m=10, n_shards=1)
    merge_shards(paths, tmp_path / "dataset.h5", {}, m=10)
    with refusal(tmp_path / "dataset.h5", "examples_fingerprint"):
        read_dataset(tmp_path / "dataset.h5", {"examples_fingerprint": "ex-99"})


# ----------------------------------------------------------------------------- attributions


def attribution_inputs(n=3, n_components=4):
    rng = np.random.default_rng(0)
    return {
        "weight": rng.normal(size=(n, n_components)).astype(np.float32),
        "bias": rng.normal(size=n).astype(np.float32),
        "lam": np.logspace(-2, 1, n),
        "components": [(f"layer{i // 2}.conv", i % 2, "conv_channel") for i in range(n_components)],
        "example_ids": [f"test/{i}" for i in range(n)],
        "attrs": {
            "encoding": ENCODING,
            "solver": "ridge_gram",
            "method": "coar",
            "n_masks": 1000,
            "model_fingerprint": "model-aa11",
            "components_fingerprint": "ab12",
            "examples_fingerprint": "ex-33",
            "ablation": "weight",
            "output_fn": "margin",
            "precision": "fp32",
            "alpha": 0.05,
        },
    }


def test_attributions_round_trip(tmp_path):
    inputs = attribution_inputs()
    write_attributions(tmp_path / "attributions.h5", **inputs)
    result = read_attributions(tmp_path / "attributions.h5", {"components_fingerprint": "ab12"})
    np.testing.assert_array_equal(result.weight, inputs["weight"])
    np.testing.assert_array_equal(result.bias, inputs["bias"])
    np.testing.assert_array_equal(result.lam, inputs["lam"])
    assert result.components == inputs["components"]
    assert result.example_ids == inputs["example_ids"]
    assert result.attrs == inputs["attrs"] | {"n_examples": 3, "n_components": 4}
    with h5py.File(tmp_path / "attributions.h5", "r") as f:
        assert f["components/unit"].dtype == np.int64
        assert h5py.check_string_dtype(f["components/module"].dtype).encoding == "utf-8"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bias": np.zeros(2)}, "bias"),
        ({"example_ids": ["a"]}, "example_ids"),
        ({"components": [("fc", 0, "neuron")]}, "components"),
        ({"weight": np.zeros(4)}, "weight"),
    ],
)
def test_write_attributions_refuses_inconsistent_shapes(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        write_attributions(tmp_path / "a.h5", **attribution_inputs() | change)
    assert os.listdir(tmp_path) == []


def test_write_attributions_requires_the_encoding_and_provenance(tmp_path):
    inputs = attribution_inputs()
    del inputs["attrs"]["n_masks"]
    with pytest.raises(ValueError, match="n_masks"):
        write_attributions(tmp_path / "a.h5", **inputs)
    inputs = attribution_inputs()
    inputs["attrs"]["encoding"] = "1 = kept"
    with pytest.raises(ValueError, match="encoding"):
        write_attributions(tmp_path / "a.h5", **inputs)


def test_attributions_with_inconsistent_datasets_are_refused(tmp_path):
    path = tmp_path / "attributions.h5"
    write_attributions(path, **attribution_inputs())
    with h5py.File(path, "r+") as f:
        del f["example_ids"]
        f.create_dataset("example_ids", data=["only-one"], dtype=h5py.string_dtype())
    with refusal(path, "'example_ids'", "shape"):
        read_attributions(path)


def test_incomplete_attributions_are_refused(tmp_path):
    path = tmp_path / "attributions.h5"
    write_attributions(path, **attribution_inputs())
    with h5py.File(path, "r+") as f:
        del f.attrs["complete"]
    with refusal(path, "incomplete"):
        read_attributions(path)


# ----------------------------------------------------------------------------- one copy of the data


def merged_run(tmp_path, m=30, n_shards=3):
    """A run folder with shards/ and a dataset.h5 merged from them."""
    (tmp_path / "run" / "shards").mkdir(parents=True)
    paths, masks, outputs = make_shards(tmp_path / "run" / "shards", m=m, n_shards=n_shards)
    merge_shards(paths, tmp_path / "run" / "dataset.h5", {}, m=m)
    return tmp_path / "run" / "dataset.h5", paths, masks, outputs


def test_the_merged_dataset_refers_to_the_shards_by_relative_paths_and_copies_nothing(tmp_path):
    merged, paths, _, _ = merged_run(tmp_path)
    with h5py.File(merged, "r") as f:
        names = {source.file_name for source in f["outputs"].virtual_sources()}
        assert names == {os.path.join("shards", p.name) for p in paths}
        assert f["sources/path"].asstr()[()].tolist() == sorted(names)
    assert os.path.getsize(merged) < min(os.path.getsize(p) for p in paths)


def test_a_run_folder_moved_as_a_whole_still_reads(tmp_path):
    _, _, masks, outputs = merged_run(tmp_path)
    moved = tmp_path / "elsewhere"
    (tmp_path / "run").rename(moved)
    read_masks, read_outputs, _ = read_dataset(moved / "dataset.h5")
    np.testing.assert_array_equal(read_masks, masks)
    np.testing.assert_array_equal(read_outputs, outputs)


def test_a_shard_deleted_after_merging_is_refused_before_any_row_is_read(tmp_path):
    merged, paths, _, _ = merged_run(tmp_path)
    paths[1].unlink()
    with h5py.File(merged, "r") as f:  # what a virtual dataset alone would silently give
        assert np.isnan(f["outputs"][10:20]).all()
    with refusal(merged, paths[1], "missing", "rows 10..20"):
        iter_chunks(merged, chunk_rows=4)


def test_a_shard_replaced_after_merging_is_refused(tmp_path):
    merged, paths, _, _ = merged_run(tmp_path)
    masks, outputs = shard_data(1, 10, 20)
    paths[1].unlink()
    write_shard(paths[1], masks, outputs + 1, run_meta(shard=1, row_start=10, row_stop=20))
    with refusal(merged, paths[1], "changed or replaced", "SHA-256"):
        iter_chunks(merged, chunk_rows=4)


def test_a_shard_truncated_after_merging_is_refused(tmp_path):
    merged, paths, _, _ = merged_run(tmp_path)
    with open(paths[2], "r+b") as f:
        f.truncate(os.path.getsize(paths[2]) // 2)
    with refusal(merged, paths[2], "changed or replaced"):
        iter_chunks(merged, chunk_rows=4)


def test_a_shard_changed_between_passes_of_a_reader_is_refused(tmp_path):
    merged, paths, _, _ = merged_run(tmp_path)
    reader = h5format.RowReader(merged, chunk_rows=8)
    assert sum(len(x) for x, _ in reader()) == 30
    os.utime(paths[0], ns=(0, 0))
    with refusal(paths[0], "changed after it was checked"):
        reader()


def test_a_reader_of_some_columns_reads_those_outputs_only(tmp_path):
    merged, _, masks, outputs = merged_run(tmp_path)
    reader = h5format.RowReader(merged, chunk_rows=7).select_columns(slice(1, 3))
    read = list(reader())
    np.testing.assert_array_equal(np.concatenate([x for x, _ in read]), masks)
    np.testing.assert_array_equal(np.concatenate([y for _, y in read]), outputs[:, 1:3])


def test_attributions_written_block_by_block_equal_one_write(tmp_path):
    weight, bias, lam, components, ids, attrs = attribution_inputs(n=7).values()
    write_attributions(tmp_path / "whole.h5", weight, bias, lam, components, ids, attrs)
    with h5format.attributions_writer(tmp_path / "blocks.h5", components, ids, attrs) as writer:
        for start in (4, 0):  # any order
            writer.write(start, weight[start : start + 4], bias[start : start + 4], lam[start : start + 4])
    whole, blocks = read_attributions(tmp_path / "whole.h5"), read_attributions(tmp_path / "blocks.h5")
    np.testing.assert_array_equal(blocks.weight, whole.weight)
    np.testing.assert_array_equal(blocks.bias, whole.bias)
    assert blocks.attrs == whole.attrs and blocks.example_ids == whole.example_ids


def test_attributions_missing_a_block_never_appear(tmp_path):
    weight, bias, lam, components, ids, attrs = attribution_inputs(n=7).values()
    with pytest.raises(ValueError, match="3 of 7 examples were never written"):
        with h5format.attributions_writer(tmp_path / "a.h5", components, ids, attrs) as writer:
            writer.write(0, weight[:4], bias[:4], lam[:4])
    assert os.listdir(tmp_path) == []


def test_attribution_blocks_may_not_overlap(tmp_path):
    weight, bias, lam, components, ids, attrs = attribution_inputs(n=7).values()
    with pytest.raises(ValueError, match="overlap"):
        with h5format.attributions_writer(tmp_path / "a.h5", components, ids, attrs) as writer:
            writer.write(0, weight[:4], bias[:4], lam[:4])
            writer.write(2, weight[:4], bias[:4], lam[:4])


def test_outputs_are_stored_in_column_tiles_so_a_block_of_examples_reads_only_its_own(tmp_path):
    n = 2500
    masks = np.zeros((40, N_COMPONENTS), dtype=bool)
    outputs = np.arange(40 * n, dtype=np.float32).reshape(40, n)
    path = tmp_path / "wide.h5"
    write_shard(path, masks, outputs, run_meta(n_examples=n, shard=0, row_start=0, row_stop=40))
    with h5py.File(path, "r") as f:
        assert f["outputs"].chunks[1] == 1024
    reader = h5format.RowReader(path, chunk_rows=16, expect={"n_examples": n}).select_columns(slice(1024, 2048))
    np.testing.assert_array_equal(np.concatenate([y for _, y in reader()]), outputs[:, 1024:2048])


@pytest.mark.parametrize("damage", ["delete", "replace"])
def test_the_fit_step_refuses_a_dataset_whose_shard_was_deleted_or_replaced_after_merging(tmp_path, damage):
    from coar.steps import fit_dataset

    merged, paths, _, _ = merged_run(tmp_path, m=60, n_shards=3)
    paths[2].unlink()
    if damage == "replace":  # a shard of the same rows from another stream of masks
        masks, outputs = shard_data(7, 40, 60)
        write_shard(paths[2], masks, outputs, run_meta(shard=2, row_start=40, row_stop=60))
    expect = {k: run_meta()[k] for k in ("n_components", "n_examples", "model_fingerprint",
                                          "components_fingerprint", "examples_fingerprint")}
    out = tmp_path / "attributions.h5"
    with refusal(merged, paths[2], "rows 40..60"):
        fit_dataset(merged, out, expect, [("layer", i, "conv") for i in range(N_COMPONENTS)],
                    [f"ex{i}" for i in range(N_EXAMPLES)], method="ols", backend="numpy", chunk_rows=16)
    assert not out.exists()


# ----------------------------------------------------------------------------- surrogate.h5


def surrogate_attrs(**overrides):
    """What the fit-surrogate step records: kind, the basis's estimator, and the run's provenance
    and fingerprints as its rows carry them."""
    meta = run_meta()
    return {"kind": "projected_quadratic", "basis_method": "ols",
            **{k: meta[k] for k in ("seed", "alpha", "output_fn", "ablation", "precision", "coar_version",
                                    "encoding", "model_fingerprint", "components_fingerprint",
                                    "examples_fingerprint")}} | overrides


def fitted_surrogate():
    from coar.solver.surrogate import ProjectedQuadratic

    rng = np.random.default_rng(0)
    masks = rng.random((200, N_COMPONENTS)) < 0.3
    outputs = masks @ rng.normal(size=(N_COMPONENTS, N_EXAMPLES)) + 0.1 * rng.normal(size=(200, N_EXAMPLES))
    return ProjectedQuadratic(rank=3, penalty=2.0).fit(masks, outputs), masks


def test_surrogate_round_trip(tmp_path):
    path = tmp_path / "surrogate.h5"
    model, masks = fitted_surrogate()
    h5format.write_surrogate(path, model, surrogate_attrs())
    found = h5format.read_surrogate(path, {"n_components": N_COMPONENTS, "n_examples": N_EXAMPLES, "alpha": 0.05})
    for name in ("basis", "weight", "quad", "bias"):
        np.testing.assert_array_equal(getattr(found, name), getattr(model, f"{name}_"))
    assert found.attrs == surrogate_attrs() | {"rank": 3, "penalty": 2.0, "n_masks": 200,
                                               "n_components": N_COMPONENTS, "n_examples": N_EXAMPLES}
    np.testing.assert_array_equal(found.model().predict(masks), model.predict(masks))
    with h5py.File(path, "r") as f:
        assert all(f[name].fletcher32 for name in ("basis", "weight", "quad", "bias"))


@pytest.mark.parametrize("key, value, found", [
    ("model_fingerprint", "model-other", "model-aa11"),  # another run's
    ("alpha", 0.1, 0.05),  # this run's, made otherwise
    ("n_masks", 400, 200),
    ("kind", "other_kind", "projected_quadratic"),
])
def test_a_surrogate_of_another_run_or_made_otherwise_is_refused_naming_key_and_both_values(tmp_path, key, value,
                                                                                              found):
    path = tmp_path / "surrogate.h5"
    h5format.write_surrogate(path, fitted_surrogate()[0], surrogate_attrs())
    with pytest.raises(FormatError, match=rf"surrogate\.h5 was made with {key} {found!r} but this run has {value!r}"):
        h5format.read_surrogate(path, {key: value})


@pytest.mark.parametrize("dataset", ["basis", "weight", "quad", "bias"])
def test_a_flipped_bit_in_a_surrogate_is_refused_naming_the_dataset(tmp_path, dataset):
    from tests.test_trust import flip_a_byte

    path = tmp_path / "surrogate.h5"
    h5format.write_surrogate(path, fitted_surrogate()[0], surrogate_attrs())
    flip_a_byte(path, dataset)
    with pytest.raises(FormatError, match=rf"surrogate\.h5: dataset '{dataset}' rows .* fail their checksum"):
        h5format.read_surrogate(path)


def test_a_surrogate_is_written_whole_or_not_at_all(tmp_path):
    path = tmp_path / "surrogate.h5"
    model, _ = fitted_surrogate()
    with pytest.raises(ValueError, match=r"missing \['basis_method'\]"):
        h5format.write_surrogate(path, model, {k: v for k, v in surrogate_attrs().items() if k != "basis_method"})
    model.bias_ = np.full_like(model.bias_, np.nan)
    with pytest.raises(ValueError, match="NaN or infinite"):
        h5format.write_surrogate(path, model, surrogate_attrs())
    assert list(tmp_path.iterdir()) == []


def test_a_surrogate_with_a_malformed_dataset_is_refused(tmp_path):
    path = tmp_path / "surrogate.h5"
    h5format.write_surrogate(path, fitted_surrogate()[0], surrogate_attrs())
    with h5py.File(path, "r+") as f:
        f.attrs["rank"] = 2
    with pytest.raises(FormatError, match=r"dataset 'basis' has shape \(12, 3\), its attributes imply \(12, 2\)"):
        h5format.read_surrogate(path)
    with h5py.File(path, "r+") as f:
        f.attrs["rank"] = 3
        f.attrs["coar_format"] = "coar.attributions.v2"
    with pytest.raises(FormatError, match="is a coar.attributions.v2 file but a coar.surrogate.v1 file is needed"):
        h5format.read_surrogate(path)
