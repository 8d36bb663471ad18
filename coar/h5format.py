"""Every HDF5 layout coar writes: mask/output shards, the merged dataset, attributions, a
run's statistics per round, its surrogate.

Writing: a file is created under a temporary name in its target directory, gets the attribute
`complete=True` last, and is renamed into place only then; on an exception the temporary file is
removed. A killed job therefore never leaves a file that looks finished.

Checksums: every numeric array is stored with HDF5's fletcher32 filter, so each chunk carries a
checksum that HDF5 verifies on every read; a flipped bit is refused as FormatError naming the
file, the dataset and the rows. Shards and attributions without checksums are refused. The
string datasets of an attributions file (component modules and kinds, example ids), which
fletcher32 cannot cover, carry a SHA-256 attribute each (`<dataset>_sha256`, "/" as "_") that
every read recomputes.

Reading: files are opened without HDF5 file locks (NFS and Lustre refuse them). A reader checks
that the file exists and is whole, is `complete`, is the layout asked for, carries every
provenance attribute, has datasets of the shapes its attributes imply, and matches what the
caller expects; otherwise it raises FormatError naming the file, what is wrong and what to do.

The merged dataset holds no rows of its own: its `masks` and `outputs` are HDF5 virtual
datasets over the shard files, named by paths relative to the dataset's folder (so a run folder
can be moved as a whole), and the shards stay the only copy of the data. A virtual dataset reads
fill values where a source file has gone missing, so coar never trusts it blindly: the dataset
also records each shard's path, row range, size and SHA-256, and a reader checks every shard
against that record (exists, same bytes, complete, same run) before the first row is read, and
its size and modification time again at every pass. coar's own readers then stream the shards
themselves; other tools may read the virtual datasets (a missing shard's outputs read as NaN).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import h5py
import numpy as np

from coar.atomic import atomic_path
from coar.attributions import LinearModels

ENCODING = "1 = ablated"

PathLike = str | os.PathLike

_COMPLETE = "complete"
_FORMAT = "coar_format"
_CHUNK_BYTES = 1 << 20  # target size of one stored chunk (rows x columns)
_TILE_COLUMNS = 1024  # most examples in one stored chunk of outputs
_CACHE_BYTES = 1 << 25  # HDF5 chunk cache when reading
_STR = "variable-length string"  # dtype marker for string datasets


class FormatError(ValueError):
    """A file on disk is missing, unreadable, incomplete, or not what this run expects."""


# Attributes describing the run that made a row file (shard or merged dataset).
_RUN_ATTRS: dict[str, type] = {
    "seed": Integral,
    "alpha": Real,
    "n_components": Integral,
    "n_examples": Integral,
    "model_fingerprint": str,
    "components_fingerprint": str,
    "examples_fingerprint": str,
    "output_fn": str,
    "ablation": str,
    "precision": str,
    "coar_version": str,
    "encoding": str,
}
_SHARD_ONLY: dict[str, type] = {"shard": Integral, "row_start": Integral, "row_stop": Integral}
_DATASET_ONLY: dict[str, type] = {"m": Integral, "n_shards": Integral}

_ATTRIBUTION_ONLY: dict[str, type] = {
    "encoding": str,
    "solver": str,
    "method": str,
    "n_masks": Integral,
    "ablation": str,
    "output_fn": str,
    "precision": str,
    "model_fingerprint": str,
    "components_fingerprint": str,
    "examples_fingerprint": str,
}
_SIZES: dict[str, type] = {"n_examples": Integral, "n_components": Integral}
LABELS = ("components/module", "components/kind", "example_ids")
"""The string datasets of an attributions file, each stored with its SHA-256 (`digest_attr`)."""


def digest_attr(dataset: str) -> str:
    """The attribute holding the SHA-256 of string dataset `dataset`."""
    return f"{dataset.replace('/', '_')}_sha256"


def strings_digest(values: Iterable[str]) -> str:
    """SHA-256 of a list of strings (as JSON text): what `digest_attr` records."""
    return hashlib.sha256(json.dumps([str(v) for v in values]).encode()).hexdigest()


_LABEL_DIGESTS: dict[str, type] = {digest_attr(name): str for name in LABELS}

# What callers must put in write_shard's meta and write_attributions' attrs.
SHARD_ATTRS = tuple(_RUN_ATTRS | _SHARD_ONLY)
ATTRIBUTION_ATTRS = tuple(_ATTRIBUTION_ONLY)


@dataclass(frozen=True)
class _Layout:
    """One file format: its `coar_format` tag, required attributes, implied datasets and the
    datasets that must carry fletcher32 checksums."""

    name: str
    attrs: Mapping[str, type]
    datasets: Callable[[Mapping], dict[str, tuple[tuple[int, ...], object]]]
    checksummed: tuple[str, ...] = ()


def _row_datasets(rows: int, meta: Mapping) -> dict[str, tuple[tuple[int, ...], object]]:
    return {
        "masks": ((rows, meta["n_components"]), np.dtype(bool)),
        "outputs": ((rows, meta["n_examples"]), np.dtype(np.float32)),
    }


def _attribution_datasets(meta: Mapping) -> dict[str, tuple[tuple[int, ...], object]]:
    n, n_components = meta["n_examples"], meta["n_components"]
    return {
        "weight": ((n, n_components), np.dtype(np.float32)),
        "bias": ((n,), np.dtype(np.float32)),
        "lambda": ((n,), np.dtype(np.float64)),
        "components/module": ((n_components,), _STR),
        "components/unit": ((n_components,), np.dtype(np.int64)),
        "components/kind": ((n_components,), _STR),
        "example_ids": ((n,), _STR),
    }


_SHARD = _Layout(
    "coar.shard.v1",
    _RUN_ATTRS | _SHARD_ONLY,
    lambda a: _row_datasets(a["row_stop"] - a["row_start"], a),
    ("masks", "outputs"),
)
_SOURCE_FIELDS = {"path": _STR, "bytes": np.dtype(np.int64), "sha256": _STR,
                  "row_start": np.dtype(np.int64), "row_stop": np.dtype(np.int64)}


def _dataset_datasets(meta: Mapping) -> dict[str, tuple[tuple[int, ...], object]]:
    sources = {f"sources/{k}": ((meta["n_shards"],), dtype) for k, dtype in _SOURCE_FIELDS.items()}
    return _row_datasets(meta["m"], meta) | sources


_DATASET = _Layout("coar.dataset.v2", _RUN_ATTRS | _DATASET_ONLY, _dataset_datasets)

# A run that collects and fits in rounds (`masks: auto`, coar.rounds): after each round, the
# solver's streamed statistics of every row so far (coar.solver.SplitStream.state, one group per
# part: "train", and "val" for penalised methods), and the round's per-example held-out correlations.
_ROUND_ONLY: dict[str, type] = {
    "round": Integral, "row_stop": Integral, "method": str, "val_every": Integral, "block_rows": Integral,
    "gram": bool, "train_count": Integral, "train_held": Integral, "val_count": Integral, "val_held": Integral,
}
_STATS_FIELDS = ("mean_x", "mean_y", "sxx", "sxx_diag", "sxy", "syy", "held_x", "held_y")


def _round_parts(meta: Mapping) -> tuple[str, ...]:
    return ("train",) if meta["val_every"] == 0 else ("train", "val")


def _round_datasets(meta: Mapping) -> dict[str, tuple[tuple[int, ...], object]]:
    N, n, f64 = meta["n_components"], meta["n_examples"], np.dtype(np.float64)
    shapes = {"mean_x": (N,), "mean_y": (n,), "sxx": (N, N), "sxx_diag": (N,), "sxy": (N, n), "syy": (n,)}
    datasets = {"heldout_correlation": ((n,), f64)}
    for part in _round_parts(meta):
        datasets |= {f"{part}/{k}": (shape, f64) for k, shape in shapes.items() if k != "sxx" or meta["gram"]}
        datasets[f"{part}/held_x"] = ((meta[f"{part}_held"], N), np.dtype(bool))
        datasets[f"{part}/held_y"] = ((meta[f"{part}_held"], n), np.dtype(np.float32))
    return datasets


_ROUND = _Layout("coar.round.v1", _RUN_ATTRS | _ROUND_ONLY, _round_datasets,
                 ("heldout_correlation", *(f"{part}/{k}" for part in ("train", "val") for k in _STATS_FIELDS)))
_ATTRIBUTIONS = _Layout(
    "coar.attributions.v2",
    _ATTRIBUTION_ONLY | _SIZES | _LABEL_DIGESTS,
    _attribution_datasets,
    ("weight", "bias", "lambda", "components/unit"),
)


# A surrogate beyond linear COAR (coar.solver.surrogate.ProjectedQuadratic), fitted on the run's
# training rows: its arrays in float64, what it is (kind, rank, penalty, the estimator whose
# weights gave its basis), and the run's sizes, fingerprints and provenance as its rows carry them.
_SURROGATE_ONLY: dict[str, type] = {
    "kind": str, "rank": Integral, "penalty": Real, "basis_method": str, "n_masks": Integral,
    "seed": Integral, "alpha": Real, "output_fn": str, "ablation": str, "precision": str, "coar_version": str,
    "encoding": str, "model_fingerprint": str, "components_fingerprint": str, "examples_fingerprint": str,
}
SURROGATE_ATTRS = tuple(k for k in _SURROGATE_ONLY if k not in ("rank", "penalty", "n_masks"))
"""What callers must put in write_surrogate's attrs (rank, penalty and n_masks come from the model)."""
SURROGATE_DATASETS = ("basis", "weight", "quad", "bias")


def _surrogate_datasets(meta: Mapping) -> dict[str, tuple[tuple[int, ...], object]]:
    N, n, r, f64 = meta["n_components"], meta["n_examples"], meta["rank"], np.dtype(np.float64)
    return {"basis": ((N, r), f64), "weight": ((n, N), f64), "quad": ((n, r * (r + 1) // 2), f64), "bias": ((n,), f64)}


_SURROGATE = _Layout("coar.surrogate.v1", _SURROGATE_ONLY | _SIZES, _surrogate_datasets, SURROGATE_DATASETS)


# ----------------------------------------------------------------------------- writing


@contextmanager
def atomic_h5(path: PathLike, size_hint: int | None = None) -> Iterator[h5py.File]:
    """Yield a new HDF5 file that appears at `path`, marked complete, only if the block succeeds."""
    with atomic_path(path, size_hint) as tmp:
        with h5py.File(tmp, "w", locking=False) as f:
            yield f
            f.attrs[_COMPLETE] = True


def write_shard(path: PathLike, masks: np.ndarray, outputs: np.ndarray, meta: Mapping) -> None:
    """Write one shard: masks (rows x N bool, True = ablated), outputs (rows x n), provenance."""
    meta = _checked_attrs(_SHARD, meta)
    if not 0.0 < meta["alpha"] < 1.0:
        raise ValueError(f"shard meta alpha must lie in (0, 1), got {meta['alpha']}")
    if not 0 <= meta["row_start"] < meta["row_stop"]:
        raise ValueError(
            f"shard meta needs 0 <= row_start < row_stop, got {meta['row_start']}..{meta['row_stop']}"
        )
    if meta["n_components"] < 1 or meta["n_examples"] < 1:
        raise ValueError("shard meta n_components and n_examples must be >= 1")
    masks, outputs = np.asarray(masks), np.asarray(outputs)
    if masks.dtype != bool:
        raise ValueError(f"masks must be a bool array (True = ablated), got dtype {masks.dtype}")
    expected = _SHARD.datasets(meta)
    for name, data in (("masks", masks), ("outputs", outputs)):
        if data.shape != expected[name][0]:
            raise ValueError(
                f"{name} has shape {data.shape} but meta (rows {meta['row_start']}..{meta['row_stop']}, "
                f"n_components={meta['n_components']}, n_examples={meta['n_examples']}) "
                f"implies {expected[name][0]}"
            )
    # Outputs are chunked in tiles of at most _TILE_COLUMNS examples, so that a fit taking one
    # block of examples per pass reads only that block's columns from disk.
    tile = min(meta["n_examples"], _TILE_COLUMNS)
    with atomic_h5(path, masks.nbytes + 4 * outputs.size) as f:
        _create_rows(f, "masks", masks.shape, bool, _chunk_rows(meta["n_components"]), masks)
        _create_rows(f, "outputs", outputs.shape, np.float32, _chunk_rows(tile), outputs.astype(np.float32), tile)
        _write_attrs(f, _SHARD, meta)


class AttributionsWriter:
    """Rows of an attributions file being written, block of examples by block (see
    `attributions_writer`)."""

    def __init__(self, f: h5py.File, n_examples: int, n_components: int) -> None:
        self._f = f
        self._written = np.zeros(n_examples, dtype=bool)
        self.n_components = n_components

    def write(self, start: int, weight: np.ndarray, bias: np.ndarray, lam: np.ndarray) -> None:
        """Store examples start .. start + len(weight): weight (rows x N), bias and lambda (rows)."""
        weight = np.asarray(weight, dtype=np.float32)
        rows = weight.shape[0] if weight.ndim == 2 else -1
        if weight.ndim != 2 or weight.shape[1] != self.n_components or rows < 1:
            raise ValueError(f"weight must be (examples x {self.n_components}), got {weight.shape}")
        if np.shape(bias) != (rows,) or np.shape(lam) != (rows,):
            raise ValueError(f"bias and lam need shape ({rows},), got {np.shape(bias)} and {np.shape(lam)}")
        stop = start + rows
        if not 0 <= start < stop <= self._written.size:
            raise ValueError(f"examples {start}..{stop} are outside 0..{self._written.size}")
        if self._written[start:stop].any():
            raise ValueError(f"examples {start}..{stop} overlap examples already written")
        self._f["weight"][start:stop] = weight
        self._f["bias"][start:stop] = np.asarray(bias, dtype=np.float32)
        self._f["lambda"][start:stop] = np.asarray(lam, dtype=np.float64)
        self._written[start:stop] = True

    def _check_complete(self) -> None:
        if missing := np.flatnonzero(~self._written).size:
            raise ValueError(f"{missing} of {self._written.size} examples were never written; the file is not finished")


@contextmanager
def attributions_writer(
    path: PathLike, components: Iterable[tuple[str, int, str]], example_ids: Iterable[str], attrs: Mapping
) -> Iterator[AttributionsWriter]:
    """An attributions file filled block by block: yields a writer whose `write` stores rows.

    The file appears at `path`, complete, only when the block ends with every example written;
    its memory is one block, whatever n. `components` lists (module, unit, kind) per weight
    column, `example_ids` names the rows; `attrs` needs ATTRIBUTION_ATTRS (extra scalar attrs
    are kept); n_examples, n_components and the labels' digests are taken from the two lists.
    """
    components, example_ids = list(components), [str(e) for e in example_ids]
    n, n_components = len(example_ids), len(components)
    if min(n, n_components) < 1:
        raise ValueError(f"attributions need at least one example and component, got {n} and {n_components}")
    modules, units, kinds = zip(*components)
    labels = dict(zip(LABELS, (modules, kinds, example_ids)))
    computed = {"n_examples": n, "n_components": n_components,
                **{digest_attr(name): strings_digest(values) for name, values in labels.items()}}
    if clash := sorted(computed.keys() & attrs.keys()):
        raise ValueError(f"attrs must not contain {clash}: they are taken from the example and component lists")
    attrs = _checked_attrs(_ATTRIBUTIONS, {**attrs, **computed})
    strings = h5py.string_dtype()
    with atomic_h5(path, 4 * n * n_components + 20 * n + 64 * n_components) as f:
        _create_rows(f, "weight", (n, n_components), np.float32, _chunk_rows(n_components))
        f.create_dataset("bias", shape=(n,), dtype=np.float32, chunks=(n,), fletcher32=True)
        f.create_dataset("lambda", shape=(n,), dtype=np.float64, chunks=(n,), fletcher32=True)
        f.create_dataset("components/module", data=[str(s) for s in modules], dtype=strings)
        f.create_dataset("components/unit", data=np.asarray(units, dtype=np.int64), fletcher32=True)
        f.create_dataset("components/kind", data=[str(s) for s in kinds], dtype=strings)
        f.create_dataset("example_ids", data=example_ids, dtype=strings)
        writer = AttributionsWriter(f, n, n_components)
        yield writer
        writer._check_complete()
        _write_attrs(f, _ATTRIBUTIONS, attrs)


def write_attributions(
    path: PathLike,
    weight: np.ndarray,
    bias: np.ndarray,
    lam: np.ndarray,
    components: Iterable[tuple[str, int, str]],
    example_ids: Iterable[str],
    attrs: Mapping,
) -> None:
    """Write per-example linear models: weight (n x N), bias (n), ridge lambda (n), and labels.

    `components` lists (module, unit, kind) per column of `weight`; `example_ids` names its rows.
    `attrs` needs ATTRIBUTION_ATTRS (extra scalar attrs are kept); n_examples and n_components
    are taken from `weight`.
    """
    weight = np.asarray(weight, dtype=np.float32)
    components, example_ids = list(components), [str(e) for e in example_ids]
    if weight.ndim != 2 or min(weight.shape) < 1:
        raise ValueError(f"weight must be a non-empty (examples x components) matrix, got {weight.shape}")
    n, n_components = weight.shape
    found = {"bias": np.shape(bias), "lam": np.shape(lam)}
    found |= {"components": (len(components),), "example_ids": (len(example_ids),)}
    wanted = {"bias": (n,), "lam": (n,), "components": (n_components,), "example_ids": (n,)}
    if wrong := {k: v for k, v in found.items() if v != wanted[k]}:
        raise ValueError(f"weight has shape {weight.shape}, so the other inputs need sizes {wanted}; got {wrong}")
    with attributions_writer(path, components, example_ids, attrs) as writer:
        writer.write(0, weight, bias, lam)


def write_round_state(path: PathLike, state: Mapping, correlation: np.ndarray, meta: Mapping) -> None:
    """Write a round's file: `state` from coar.solver.SplitStream.state(), the round's held-out
    correlation per example (NaN where undefined), and `meta`: the run's attributes (those of
    its shards, without row ranges) with round, row_stop and method."""
    parts = _round_parts(state)
    meta = {**meta, "val_every": state["val_every"], "block_rows": state["block_rows"], "gram": state["gram"],
            "val_count": 0, "val_held": 0,
            **{f"{part}_count": state[f"{part}/count"] for part in parts},
            **{f"{part}_held": state[f"{part}/held_x"].shape[0] for part in parts}}
    meta = _checked_attrs(_ROUND, meta)
    if state["offset"] != meta["row_stop"] or (state["n_components"], state["n_examples"]) != (meta["n_components"], meta["n_examples"]):
        raise ValueError(f"the statistics cover {state['offset']} rows of {state['n_components']} components x "
                         f"{state['n_examples']} examples, the meta says {meta['row_stop']} rows of "
                         f"{meta['n_components']} x {meta['n_examples']}")
    arrays = {"heldout_correlation": np.asarray(correlation, np.float64)}
    arrays |= {f"{part}/{k}": state[f"{part}/{k}"] for part in parts for k in _STATS_FIELDS if f"{part}/{k}" in state}
    if any(arrays[f"{part}/held_y"].dtype != np.float32 for part in parts):
        raise ValueError("held outputs must be float32 (as collected): a cast would change the statistics")
    expected = _ROUND.datasets(meta)
    if wrong := [f"{k} {arrays[k].shape} {arrays[k].dtype}" for k in expected
                 if (arrays[k].shape, arrays[k].dtype) != expected[k]]:
        raise ValueError(f"round statistics of unexpected shapes or dtypes: {wrong}")
    with atomic_h5(path, sum(a.nbytes for a in arrays.values())) as f:
        for name, data in arrays.items():
            f.create_dataset(name, data=data, chunks=True if data.size else None, fletcher32=bool(data.size))
        _write_attrs(f, _ROUND, meta)


def read_round_state(path: PathLike, expect: Mapping) -> tuple[dict, np.ndarray, dict]:
    """(state for SplitStream.from_state, held-out correlation per example, meta) of a round's
    file, after the checks every reader makes and against `expect`."""
    with _reading(path) as f:
        meta = _read_meta(f, path, _ROUND)
        check_expected(path, meta, expect)
        arrays = {name: _verified(f, path, name) for name in _ROUND.datasets(meta)}
    state = {"offset": meta["row_stop"], "n_components": meta["n_components"], "n_examples": meta["n_examples"],
             "val_every": meta["val_every"], "block_rows": meta["block_rows"], "gram": meta["gram"]}
    for part in _round_parts(meta):
        state[f"{part}/count"] = meta[f"{part}_count"]
    state |= {k: v for k, v in arrays.items() if k != "heldout_correlation"}
    return state, arrays["heldout_correlation"], meta


def write_surrogate(path: PathLike, model: object, attrs: Mapping) -> None:
    """Write a fitted surrogate (coar.solver.surrogate.ProjectedQuadratic: basis_, weight_, quad_,
    bias_, rank, penalty, n_masks_) with `attrs` (SURROGATE_ATTRS: its kind, the method whose
    weights gave the basis, and the run's provenance and fingerprints); sizes come from the model."""
    arrays = {name: np.asarray(getattr(model, f"{name}_"), dtype=np.float64) for name in SURROGATE_DATASETS}
    n, N = arrays["weight"].shape
    computed = {"rank": model.rank, "penalty": model.penalty, "n_masks": model.n_masks_,
                "n_components": N, "n_examples": n}
    if clash := sorted(computed.keys() & attrs.keys()):
        raise ValueError(f"attrs must not contain {clash}: they are taken from the surrogate")
    meta = _checked_attrs(_SURROGATE, {**attrs, **computed})
    expected = _SURROGATE.datasets(meta)
    if wrong := [f"{k} {arrays[k].shape}" for k in expected if arrays[k].shape != expected[k][0]]:
        raise ValueError(f"surrogate arrays of unexpected shapes {wrong} for rank {meta['rank']}, {N} components "
                         f"and {n} examples")
    if not all(np.all(np.isfinite(a)) for a in arrays.values()):
        raise ValueError("the surrogate holds NaN or infinite values; nothing was written")
    with atomic_h5(path, sum(a.nbytes for a in arrays.values())) as f:
        for name, data in arrays.items():
            f.create_dataset(name, data=data, chunks=data.shape, fletcher32=True)
        _write_attrs(f, _SURROGATE, meta)


@dataclass(frozen=True)
class SurrogateFile:
    """A surrogate file's arrays (float64) and attributes; `model()` rebuilds the surrogate."""

    basis: np.ndarray
    weight: np.ndarray
    quad: np.ndarray
    bias: np.ndarray
    attrs: dict

    def model(self, threads: int | None = 1) -> object:
        """The fitted coar.solver.surrogate.ProjectedQuadratic."""
        from coar.solver.surrogate import ProjectedQuadratic

        return ProjectedQuadratic.from_fitted(self.basis, self.weight, self.quad, self.bias, rank=self.attrs["rank"],
                                              penalty=self.attrs["penalty"], n_masks=self.attrs["n_masks"],
                                              threads=threads)


def read_surrogate(path: PathLike, expect: Mapping | None = None) -> SurrogateFile:
    """Load and validate a surrogate file: refused (FormatError naming the file, the key and both
    values) unless it records every value in `expect` (the run's sizes and fingerprints, how its
    rows were made, its kind ...); a chunk failing its checksum is refused naming the dataset."""
    with _reading(path) as f:
        attrs = _read_meta(f, path, _SURROGATE)
        check_expected(path, attrs, expect or {})
        arrays = {name: _verified(f, path, name) for name in SURROGATE_DATASETS}
    return SurrogateFile(**arrays, attrs=attrs)


def merge_shards(paths: Iterable[PathLike], out_path: PathLike, expect: Mapping, m: int) -> dict:
    """Check the shards, then write a dataset file that refers to them (no copy); return its attrs.

    The dataset keeps the shards' run attributes (not their row range), adds m and n_shards,
    and records each shard's relative path, rows, size and SHA-256 (see the module docstring).
    """
    sources = check_shards(paths, expect, m)
    attrs = {**_run_attrs(sources[0][1]), "m": m, "n_shards": len(sources)}
    n_components, n_examples = attrs["n_components"], attrs["n_examples"]
    folder = Path(out_path).absolute().parent
    masks = h5py.VirtualLayout(shape=(m, n_components), dtype=bool)
    outputs = h5py.VirtualLayout(shape=(m, n_examples), dtype=np.float32)
    record: dict[str, list] = {k: [] for k in _SOURCE_FIELDS}
    for path, meta in sources:
        start, stop = _row_range(meta)
        relative = os.path.relpath(Path(path).absolute(), folder)
        masks[start:stop] = h5py.VirtualSource(relative, "masks", shape=(stop - start, n_components))
        outputs[start:stop] = h5py.VirtualSource(relative, "outputs", shape=(stop - start, n_examples))
        for key, value in zip(_SOURCE_FIELDS, (relative, os.path.getsize(path), _sha256(path), start, stop)):
            record[key].append(value)
    with atomic_h5(out_path) as f:
        f.create_virtual_dataset("masks", masks, fillvalue=False)
        f.create_virtual_dataset("outputs", outputs, fillvalue=np.nan)
        for key, dtype in _SOURCE_FIELDS.items():
            f.create_dataset(f"sources/{key}", data=record[key], dtype=h5py.string_dtype() if dtype == _STR else dtype)
        _write_attrs(f, _DATASET, attrs)
    return attrs


def _sha256(path: PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _chunk_rows(*column_counts: int) -> int:
    """Rows per stored chunk so that the widest row-chunked dataset's chunks stay near 1 MiB."""
    widest = max(4 * c for c in column_counts)  # sized for float32; bool rows take a quarter
    return max(1, _CHUNK_BYTES // widest)


def _create_rows(
    f: h5py.File,
    name: str,
    shape: tuple[int, int],
    dtype,
    chunk_rows: int,
    data: np.ndarray | None = None,
    chunk_columns: int | None = None,
) -> h5py.Dataset:
    """A matrix chunked along rows (and columns, given chunk_columns), each chunk checksummed
    (fletcher32); bool (mask) matrices are gzip-compressed, being mostly zeros."""
    compression = {"compression": "gzip", "compression_opts": 4} if np.dtype(dtype) == bool else {}
    chunks = (min(chunk_rows, shape[0]), chunk_columns or shape[1])
    return f.create_dataset(name, shape=shape, dtype=dtype, data=data, chunks=chunks, fletcher32=True, **compression)


def _checked_attrs(layout: _Layout, attrs: Mapping) -> dict:
    """Plain-Python copy of `attrs` after checking required keys, value types and encoding."""
    missing = [k for k in layout.attrs if k not in attrs]
    if missing:
        raise ValueError(f"{layout.name} attributes are missing {missing}")
    if reserved := sorted({_COMPLETE, _FORMAT} & attrs.keys()):
        raise ValueError(f"attributes {reserved} are set by h5format itself")
    plain = {k: _plain(k, v) for k, v in attrs.items()}
    wrong = [f"{k}={plain[k]!r} (needs {t.__name__})" for k, t in layout.attrs.items() if not isinstance(plain[k], t)]
    if wrong:
        raise ValueError(f"{layout.name} attributes have wrong types: {', '.join(wrong)}")
    if plain["encoding"] != ENCODING:
        raise ValueError(f"encoding must be {ENCODING!r} (True = component ablated), got {plain['encoding']!r}")
    return plain


def _plain(key: str, value: object) -> object:
    """Attribute values are scalars stored as Python types, so they round-trip exactly."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        return float(value)
    raise ValueError(f"attribute {key}={value!r} must be a str, bool, int or float")


def _write_attrs(f: h5py.File, layout: _Layout, attrs: Mapping) -> None:
    f.attrs.update(attrs)
    f.attrs[_FORMAT] = layout.name


# ----------------------------------------------------------------------------- reading


def read_shard_meta(path: PathLike) -> dict:
    """Validated attributes of a shard file (FormatError if it is unusable)."""
    with _reading(path) as f:
        return _read_meta(f, path, _SHARD)


def check_shard(path: PathLike, expect: Mapping) -> dict:
    """read_shard_meta, plus FormatError unless every key in `expect` has the expected value."""
    meta = read_shard_meta(path)
    check_expected(path, meta, expect)
    return meta


def check_shards(paths: Iterable[PathLike], expect: Mapping, m: int) -> list[tuple[str, dict]]:
    """Check every shard, that they come from one run, and that their rows tile 0..m exactly.

    Returns (path, meta) pairs in row order.
    """
    return _row_sources(paths, expect, m, (_SHARD,))


def iter_chunks(
    paths: PathLike | Iterable[PathLike], chunk_rows: int, expect: Mapping | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream (masks, outputs) in blocks of `chunk_rows` rows, in row order, across files.

    `paths` are shards or one merged dataset file. Files are validated before the first block;
    the rows must tile 0..(last row) without gaps or overlaps. Memory is independent of m.
    One pass of a `RowReader`, which validates once for many passes.
    """
    return RowReader(paths, chunk_rows, expect)()


class RowReader:
    """Row files (shards, or a merged dataset's shards) validated once, then streamed in
    passes: each call yields (masks, outputs) blocks of chunk_rows rows in row order.

    Construction checks everything iter_chunks does, and for a merged dataset every shard it
    refers to (see the module docstring). Every pass first checks that no file's size or
    modification time changed since. `select_columns` gives a reader of some examples only,
    which reads just those output columns.
    """

    def __init__(
        self, paths: PathLike | Iterable[PathLike], chunk_rows: int, expect: Mapping | None = None,
        first_row: int = 0,
    ) -> None:
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, Integral) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        self.chunk_rows = int(chunk_rows)
        self.columns = slice(None)
        self.sources = _row_sources(paths, expect or {}, None, (_SHARD, _DATASET), first_row)
        self._stamps = [_stamp(path) for path, _ in self.sources]

    @property
    def run_attrs(self) -> dict:
        """How the rows were made (see `run_attrs_of`)."""
        return _run_attrs(self.sources[0][1])

    @property
    def n_rows(self) -> int:
        """Rows in all the files together (m)."""
        return sum(stop - start for start, stop in (_row_range(meta) for _, meta in self.sources))

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for (path, _), stamp in zip(self.sources, self._stamps):
            if _stamp(path) != stamp:
                raise FormatError(
                    f"{path} changed after it was checked (size or modification time); rerun the step"
                )
        return _chunks(self.sources, self.chunk_rows, self.columns)

    def select_columns(self, columns: slice) -> RowReader:
        """The same rows with only the outputs of the examples in `columns`."""
        reader = copy.copy(self)
        reader.columns = columns
        return reader


def run_attrs_of(paths: PathLike | Iterable[PathLike], expect: Mapping | None = None) -> dict:
    """How the rows of shards or a merged dataset were made (alpha, seed, ablation, output_fn,
    precision, fingerprints, sizes), after validating every file as `iter_chunks` does."""
    return RowReader(paths, 1, expect).run_attrs


def read_dataset(path: PathLike, expect: Mapping | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Load a merged dataset whole: masks (m x N bool), outputs (m x n float32), attrs."""
    with _reading(path) as f:
        attrs = _read_meta(f, path, _DATASET)
    check_expected(path, attrs, expect or {})
    blocks = list(RowReader(path, attrs["m"])())
    return blocks[0][0], blocks[0][1], attrs


@dataclass(frozen=True)
class AttributionsFile(LinearModels):
    """An attributions file's per-example linear models (coar.attributions.LinearModels: weight
    (n, N) and bias (n,), float32) with what the file records about them."""

    lam: np.ndarray  # (n,) float64, the ridge penalty chosen per example
    components: list[tuple[str, int, str]]  # (module, unit, kind) per column of weight
    example_ids: list[str]  # one per row of weight
    attrs: dict


def read_attributions(path: PathLike, expect: Mapping | None = None) -> AttributionsFile:
    """Load and validate an attributions file."""
    with _reading(path) as f:
        attrs = _read_meta(f, path, _ATTRIBUTIONS)
        check_expected(path, attrs, expect or {})
        modules, kinds, ids = (_verified_strings(f, path, name, attrs) for name in LABELS)
        return AttributionsFile(
            weight=_verified(f, path, "weight"),
            bias=_verified(f, path, "bias"),
            lam=_verified(f, path, "lambda"),
            components=list(zip(modules, _verified(f, path, "components/unit").tolist(), kinds)),
            example_ids=ids,
            attrs={k: v for k, v in attrs.items() if k not in _LABEL_DIGESTS},
        )


def _verified_strings(f: h5py.File, path: PathLike, name: str, attrs: Mapping) -> list[str]:
    """String dataset `name`, refused as FormatError naming file and dataset unless its SHA-256
    equals the one recorded when it was written."""
    try:
        values = f[name].asstr()[()].tolist()
        problem = None if strings_digest(values) == attrs[digest_attr(name)] else \
            f"differs from its recorded SHA-256 ({digest_attr(name)})"
    except (OSError, UnicodeDecodeError) as err:
        problem = f"cannot be read ({err})"
    if problem:
        raise FormatError(f"{path}: dataset {name!r} {problem}; the file is corrupt: delete it and rerun the step "
                          "that makes it")
    return values


@contextmanager
def _reading(path: PathLike) -> Iterator[h5py.File]:
    """Open `path` read-only without file locks; turn HDF5 I/O errors into FormatError."""
    if not os.path.isfile(path):
        raise FormatError(f"{path} does not exist; run the step that makes it")
    try:
        with h5py.File(path, "r", locking=False, rdcc_nbytes=_CACHE_BYTES) as f:
            yield f
    except OSError as err:
        raise FormatError(
            f"{path} cannot be read as HDF5 ({err}); it is truncated, corrupt or not an HDF5 file: "
            "delete it and rerun the step that makes it"
        ) from err


def _read_meta(f: h5py.File, path: PathLike, layout: _Layout) -> dict:
    """Attributes of an open file after checking completeness, layout, attributes and datasets."""
    attrs = {k: _python(v) for k, v in f.attrs.items()}
    if odd := [f"{k}={v!r}" for k, v in attrs.items() if not _is_plain(v)]:
        raise FormatError(
            f"{path} has attributes coar never writes {odd} (coar stores only str without NUL, bool, int and "
            "float): it was changed by another tool; delete it and rerun the step that makes it"
        )
    if attrs.get(_COMPLETE) is not True:
        raise FormatError(
            f"{path} is incomplete (no complete=True attribute): the job writing it did not finish "
            "or it was not written by coar; delete it and rerun the step that makes it"
        )
    if attrs.get(_FORMAT) != layout.name:
        raise FormatError(
            f"{path} is a {attrs.get(_FORMAT, 'non-coar')} file but a {layout.name} file is needed here; "
            "pass the right file"
        )
    missing = [k for k in layout.attrs if k not in attrs]
    wrong = [f"{k}={v!r}" for k, t in layout.attrs.items() if (v := attrs.get(k)) is not None and not isinstance(v, t)]
    if missing or wrong:
        raise FormatError(
            f"{path} lacks attributes {missing} or has malformed ones {wrong}; it was written by another "
            "tool or coar version: delete it and rerun the step that makes it"
        )
    if attrs["encoding"] != ENCODING:
        raise FormatError(
            f"{path} uses mask encoding {attrs['encoding']!r}, coar needs {ENCODING!r}; rerun the step that makes it"
        )
    for name, (shape, dtype) in layout.datasets(attrs).items():
        problem = _dataset_problem(f, name, shape, dtype)
        if problem is None and name in layout.checksummed and f[name].size and not f[name].fletcher32:
            problem = f"dataset {name!r} carries no checksum (written by an older coar)"
        if problem:
            raise FormatError(
                f"{path}: {problem}; the file is damaged or inconsistent, delete it and rerun the step that makes it"
            )
    return {k: v for k, v in attrs.items() if k not in (_COMPLETE, _FORMAT)}


def _verified(f: h5py.File, path: PathLike, name: str, start: int | None = None, stop: int | None = None,
              columns: slice = slice(None)) -> np.ndarray:
    """Rows start..stop (and `columns`) of dataset `name` (all by default); HDF5 verifies the
    chunks' checksums, and a failure becomes FormatError naming the file, the dataset and the rows."""
    ds = f[name]
    rows = slice(start, stop)
    try:
        if not ds.ndim:
            return ds[()]
        return ds[rows] if ds.ndim == 1 or columns == slice(None) else ds[rows, columns]
    except OSError as err:
        first, last = rows.indices(ds.shape[0] if ds.ndim else 1)[:2]
        raise FormatError(
            f"{path}: dataset {name!r} rows {first}..{last} fail their checksum or cannot be read ({err}); "
            "the file is corrupt: delete it and rerun the step that makes it"
        ) from err


def _dataset_problem(f: h5py.File, name: str, shape: tuple[int, ...], dtype: object) -> str | None:
    if not isinstance(f.get(name), h5py.Dataset):
        return f"dataset {name!r} is missing"
    ds = f[name]
    if ds.shape != shape:
        return f"dataset {name!r} has shape {ds.shape}, its attributes imply {shape}"
    found = _STR if h5py.check_string_dtype(ds.dtype) else ds.dtype
    if found != dtype:
        return f"dataset {name!r} has dtype {found}, expected {dtype}"
    return None


def _python(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode()
    return value


def _is_plain(value: object) -> bool:
    """True for the attribute values coar writes (see `_plain`)."""
    return isinstance(value, (bool, Integral, Real)) or (isinstance(value, str) and "\0" not in value)


def check_expected(path: PathLike, meta: Mapping, expect: Mapping) -> None:
    """FormatError naming `path`, each key and both values unless `meta` holds every value in `expect`."""
    differ = [
        f"{f'{key} {meta[key]!r}' if key in meta else f'no {key}'} but this run has {want!r}"
        for key, want in expect.items()
        if key not in meta or meta[key] != want
    ]
    if differ:
        raise FormatError(
            f"{path} was made with {'; '.join(differ)}; delete it or rerun with the matching config"
        )


def _row_sources(
    paths: PathLike | Iterable[PathLike], expect: Mapping, m: int | None, layouts: tuple[_Layout, ...],
    first_row: int = 0,
) -> list[tuple[str, dict]]:
    """Validated (path, meta) of row files in row order; they must come from one run and tile
    first_row..m."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        names = " or ".join(lay.name for lay in layouts)
        raise FormatError(f"no {names} files were given; run the steps that make them")
    sources = []
    for path in paths:
        with _reading(path) as f:
            fmt = _python(f.attrs.get(_FORMAT))
            layout = next((lay for lay in layouts if lay.name == fmt), layouts[0])
            meta = _read_meta(f, path, layout)
            check_expected(path, meta, expect)
            sources += _dataset_shards(f, path, meta) if layout is _DATASET else [(str(path), meta)]
    first_path, first = sources[0]
    for path, meta in sources[1:]:
        a, b = _run_attrs(first), _run_attrs(meta)
        if differ := sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)):
            details = ", ".join(f"{k} {b.get(k)!r} vs {a.get(k)!r}" for k in differ)
            raise FormatError(
                f"{path} and {first_path} come from different runs ({details}); "
                "delete the stale files and rerun the steps that make them"
            )
    sources.sort(key=lambda s: _row_range(s[1]))
    _check_tiling(sources, m, first_row)
    return sources


def _dataset_shards(f: h5py.File, path: PathLike, meta: Mapping) -> list[tuple[str, dict]]:
    """(path, meta) of every shard a merged dataset refers to, after checking each against the
    dataset's record: present, same size and SHA-256, a complete shard of the same run holding
    the recorded rows; and that together they tile the dataset's rows."""
    record = {k: f[f"sources/{k}"].asstr()[()] if dtype == _STR else f[f"sources/{k}"][()]
              for k, dtype in _SOURCE_FIELDS.items()}
    folder, shards = Path(path).parent, []
    for i, relative in enumerate(record["path"]):
        shard = folder / relative
        rows = f"rows {record['row_start'][i]}..{record['row_stop'][i]}"
        redo = f"rerun the collect step for {rows} and then merge (the shards are the dataset's only copy)"
        if not shard.is_file():
            raise FormatError(f"{path} refers to shard {shard}, which is missing; {redo}")
        if os.path.getsize(shard) != record["bytes"][i] or _sha256(shard) != record["sha256"][i]:
            raise FormatError(
                f"{path} refers to shard {shard}, which was changed or replaced after merging (its size or "
                f"SHA-256 differs from the record); rerun merge if the new shard is right, else {redo}"
            )
        with _reading(shard) as g:
            shard_meta = _read_meta(g, shard, _SHARD)
        if _run_attrs(shard_meta) != _run_attrs(meta) or _row_range(shard_meta) != (record["row_start"][i], record["row_stop"][i]):
            raise FormatError(f"{path} refers to shard {shard}, which now belongs to another run or rows; {redo}")
        shards.append((str(shard), shard_meta))
    _check_tiling(shards, meta["m"])
    return shards


def _stamp(path: PathLike) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def _run_attrs(meta: Mapping) -> dict:
    """The attributes shared by every row file of one run (not the file's own row range)."""
    return {k: v for k, v in meta.items() if k not in _SHARD_ONLY and k not in _DATASET_ONLY}


def _row_range(meta: Mapping) -> tuple[int, int]:
    return (meta["row_start"], meta["row_stop"]) if "row_start" in meta else (0, meta["m"])


def _check_tiling(sources: list[tuple[str, dict]], m: int | None, first_row: int = 0) -> None:
    """FormatError naming every gap, overlap and overshoot unless the row ranges tile first_row..m."""
    problems, covered, last = [], first_row, None
    for path, meta in sources:
        start, stop = _row_range(meta)
        if start > covered:
            where = f"between {last} and {path}" if last else f"before {path}"
            problems.append(f"rows {covered}..{start} are missing ({where})")
        elif start < covered:
            problems.append(f"rows {start}..{min(stop, covered)} are in both {last} and {path}")
        if m is not None and stop > m:
            problems.append(f"{path} holds rows {start}..{stop}, beyond m={m}")
        if stop > covered:
            covered, last = stop, path
    if m is not None and covered < m:
        problems.append(f"rows {covered}..{m} are missing (after {last})")
    if problems:
        raise FormatError(
            f"the files do not tile rows {first_row}..{covered if m is None else m} exactly: {'; '.join(problems)}; "
            "rerun the collect step for missing rows and delete stray or stale files"
        )


def _chunks(
    sources: list[tuple[str, dict]], chunk_rows: int, columns: slice = slice(None)
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(masks, outputs[:, columns]) blocks of exactly chunk_rows rows (the last may be
    shorter), across files."""
    masks, outputs, held = [], [], 0
    for path, _ in sources:
        with _reading(path) as f:
            start, rows = 0, f["masks"].shape[0]
            while start < rows:
                stop = min(rows, start + chunk_rows - held)
                masks.append(_verified(f, path, "masks", start, stop))
                outputs.append(_verified(f, path, "outputs", start, stop, columns))
                held, start = held + stop - start, stop
                if held == chunk_rows:
                    yield np.concatenate(masks), np.concatenate(outputs)
                    masks, outputs, held = [], [], 0
    if held:
        yield np.concatenate(masks), np.concatenate(outputs)
