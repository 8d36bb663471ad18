"""Streaming sufficient statistics of ablation masks X and model outputs Y for least squares.

All a linear fit of every example needs from m rows: the count, the means of X and Y, the
centred Gram matrix Sxx = Xc'Xc (N x N), the centred cross products Sxy = Xc'Yc (N x n) and each
target's centred sum of squares syy (n,). They are accumulated block by block in float64, in
O(N^2 + N n) memory whatever m is. Within a block X'X is computed on the 0/1 masks in float32,
which is exact (integer counts of fewer than 2**24 rows), and centred in float64. Blocks and
shards are combined with the pairwise update of Chan, Golub and LeVeque (1979), so statistics of
shards computed separately merge to the statistics of their concatenation.

Chunk streams are split deterministically: row i (counted from 0 across chunks) is a validation
row when i % val_every == 0, so one streamed pass yields both training and validation statistics.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import numpy as np

from .backend import Backend, BackendName, get_backend

Chunk = tuple[np.ndarray, np.ndarray]
ChunkSource = Callable[[], Iterable[Chunk]]
Part = Literal["all", "train", "val"]
_SLAB_BYTES = 1 << 27  # largest float32 temporary of a slab of X'X


class GramStats:
    """Centred sufficient statistics of rows (x, y); see the module docstring.

    Attributes, arrays of `backend` in float64: `count` (int), `mean_x` (N,), `mean_y` (n,),
    `sxx` (N, N), `sxx_diag` (N,), `sxy` (N, n), `syy` (n,). With gram=False `sxx` is None and
    only its diagonal is kept: that is what the iterative solver needs when N^2 does not fit.
    """

    def __init__(
        self,
        n_components: int,
        n_targets: int,
        *,
        backend: BackendName | Backend = "auto",
        gram: bool = True,
        block_rows: int | None = None,
    ) -> None:
        self.backend = get_backend(backend)
        xp = self.backend.xp
        self.block_rows = block_rows or default_block_rows(n_components, n_targets)
        self.count = 0
        self.mean_x = xp.zeros(n_components)
        self.mean_y = xp.zeros(n_targets)
        self.sxx = xp.zeros((n_components, n_components)) if gram else None
        self.sxx_diag = xp.zeros(n_components)
        self.sxy = xp.zeros((n_components, n_targets))
        self.syy = xp.zeros(n_targets)

    @classmethod
    def from_chunks(
        cls,
        chunks: Iterable[Chunk],
        *,
        backend: BackendName | Backend = "auto",
        gram: bool = True,
        block_rows: int | None = None,
    ) -> GramStats:
        """Statistics of all rows of a stream of (X, Y) chunks, in one pass."""
        return split_stats(chunks, None, backend=backend, gram=gram, block_rows=block_rows)[0]

    @property
    def n_components(self) -> int:
        return self.mean_x.shape[0]

    @property
    def n_targets(self) -> int:
        return self.mean_y.shape[0]

    def update(self, X: np.ndarray, Y: np.ndarray) -> GramStats:
        """Add rows: X (r, N) 0/1 ablation masks, Y (r, n) outputs. Returns self."""
        X, Y = check_chunk(X, Y, offset=self.count, shape=(self.n_components, self.n_targets))
        rows, examples = nonfinite_outputs(Y)
        if rows.size:
            raise _nonfinite_error(self.count + rows, examples)
        self._accumulate(X, Y)
        return self

    def merge(self, other: GramStats) -> GramStats:
        """Add the rows summarised by `other` (Chan et al.'s pairwise update). Returns self."""
        if (other.n_components, other.n_targets) != (self.n_components, self.n_targets):
            raise ValueError(
                f"cannot merge statistics of {other.n_components} components x {other.n_targets} "
                f"examples into statistics of {self.n_components} x {self.n_targets}: the shards "
                "come from different component or example sets"
            )
        if (other.sxx is None) != (self.sxx is None):
            raise ValueError("cannot merge statistics with a Gram matrix and ones without")
        if other.count == 0:
            return self
        dx, scale = self._merge_moments(other)
        if self.sxx is not None:
            self.sxx += other.sxx
            self.sxx += self.backend.xp.outer(dx * scale, dx)
        return self

    def moments(self) -> GramStats:
        """These statistics without the Gram matrix (sharing their arrays): what a solver needs
        besides a Gram matrix it already holds or has factored."""
        return self._with(sxx=None)

    def with_gram(self, sxx: Any) -> GramStats:
        """These statistics with the given Gram matrix (sharing arrays, not copying them)."""
        return self._with(sxx=sxx)

    def copy(self) -> GramStats:
        return self._with(**{k: _copy(v) for k, v in self._arrays().items()})

    def merged(self, other: GramStats) -> GramStats:
        """Statistics of the rows of both, leaving self and other unchanged."""
        return self.copy().merge(other)

    def take(self, components: Any) -> GramStats:
        """Statistics of the masks restricted to the given component indices."""
        idx = self.backend.xp.asarray(components)
        return self._with(
            mean_x=self.mean_x[idx],
            sxx=None if self.sxx is None else self.sxx[idx[:, None], idx[None, :]],
            sxx_diag=self.sxx_diag[idx],
            sxy=self.sxy[idx],
        )

    def rotated(self, basis: Any) -> GramStats:
        """Statistics of the features x @ basis (N x k), e.g. coordinates in an eigenbasis.

        The result summarises the same rows and scores predictors in the new coordinates; it
        is for scoring only (its rows are no longer 0/1 masks, so do not update it).
        """
        xp = self.backend.xp
        sxx = basis.T @ self.gram_matmul(basis)
        return self._with(
            mean_x=basis.T @ self.mean_x,
            sxx=sxx,
            sxx_diag=xp.diagonal(sxx).copy(),
            sxy=basis.T @ self.sxy,
        )

    def gram_matmul(self, P: Any) -> Any:
        """Sxx @ P."""
        if self.sxx is None:
            raise ValueError("these statistics were built with gram=False and hold no Gram matrix")
        return self.sxx @ P

    def intercept(self, W: Any) -> Any:
        """Least-squares bias of each target given weights W (N x n): mean_y - mean_x @ W."""
        return self.mean_y - self.mean_x @ W

    def sse(self, W: Any, b: Any) -> Any:
        """Sum over the rows of squared residuals of the predictor y = x @ W + b, per target.

        Closed form from the statistics, no pass over rows:
        syy - 2 w'Sxy + w'Sxx w + count * (mean_y - mean_x'w - b)^2.
        """
        xp = self.backend.xp
        quad = column_dot(xp, W, self.gram_matmul(W))
        cross = column_dot(xp, W, self.sxy)
        offset = self.mean_y - self.mean_x @ W - b
        return xp.maximum(self.syy - 2 * cross + quad + self.count * offset * offset, 0.0)

    def _accumulate(self, X: np.ndarray, Y: np.ndarray, scratch: Scratch | None = None) -> None:
        """Add checked rows, in blocks of at most block_rows rows."""
        xp = self.backend.xp
        scratch = scratch or Scratch(xp)
        for start in range(0, X.shape[0], self.block_rows):
            xf = scratch.fill("masks32", X[start : start + self.block_rows], xp.float32)
            ones = xp.sum(xf, axis=0, dtype=xp.float64)
            block = self._block_moments(xf, ones, Y[start : start + self.block_rows], scratch)
            dx, scale = self._merge_moments(block)
            if self.sxx is not None:
                # The block's centred Gram matrix is X'X - ones mean_x' (X'X in float32 is exact
                # for 0/1 entries); with Chan's term scale dx dx' it is one rank-2 correction.
                self._add_xtx(xf)
                self.sxx -= xp.stack([ones, -scale * dx], 1) @ xp.stack([block.mean_x, dx])

    def _add_xtx(self, xf: Any) -> None:
        """sxx += xf'xf by slabs of rows, so the temporary is small rather than N x N, and only
        the lower triangle is multiplied out: X'X of 0/1 masks is exact in float32 (integer
        counts), so mirroring it gives exactly the full product at half the multiply-adds."""
        step = max(1, _SLAB_BYTES // (4 * self.n_components))
        for row in range(0, self.n_components, step):
            stop = min(self.n_components, row + step)
            part = xf[:, row:stop].T @ xf[:, :stop]
            self.sxx[row:stop, :stop] += part
            self.sxx[:row, row:stop] += part[:, :row].T

    def _block_moments(self, xf: Any, ones: Any, Y: np.ndarray, scratch: Scratch) -> GramStats:
        """Statistics other than Sxx of one block of checked rows: masks xf (float32), their
        column sums `ones`, outputs Y."""
        xp = self.backend.xp
        rows = xf.shape[0]
        mean_x = ones / rows
        yc = scratch.fill("outputs", Y, xp.float64)
        mean_y = xp.mean(yc, axis=0)
        yc -= mean_y
        # Xc'Yc = X'Yc - mean_x (1'Yc); the second term only removes rounding in 1'Yc = 0.
        sxy = scratch.fill("masks64", xf, xp.float64).T @ yc
        sxy -= xp.outer(mean_x, xp.sum(yc, axis=0))
        return self._with(
            count=rows,
            mean_x=mean_x,
            mean_y=mean_y,
            sxx=None,
            sxx_diag=ones - ones * mean_x,  # x * x = x for 0/1 entries
            sxy=sxy,
            syy=column_dot(xp, yc, yc),
        )

    def _merge_moments(self, other: GramStats) -> tuple[Any, float]:
        """Chan et al.'s update of everything but Sxx; returns the mean shift dx and the weight
        count_self * count_other / total of its outer product in the update of Sxx."""
        xp = self.backend.xp
        total = self.count + other.count
        scale = self.count * other.count / total
        dx = other.mean_x - self.mean_x
        dy = other.mean_y - self.mean_y
        self.mean_x += dx * (other.count / total)
        self.mean_y += dy * (other.count / total)
        self.sxx_diag += other.sxx_diag + scale * dx * dx
        self.sxy += other.sxy
        self.sxy += xp.outer(dx * scale, dy)
        self.syy += other.syy + scale * dy * dy
        self.count = total
        return dx, scale

    def _arrays(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("mean_x", "mean_y", "sxx", "sxx_diag", "sxy", "syy")}

    def _with(self, **fields: Any) -> GramStats:
        new = copy.copy(self)
        new.__dict__.update(fields)
        return new


def column_dot(xp: Any, A: Any, B: Any) -> Any:
    """Dot products of corresponding columns of two arrays, without a temporary product."""
    return xp.einsum("ij,ij->j", A, B)


def column_source(source: ChunkSource, columns: slice) -> ChunkSource:
    """The chunks of `source` with only the given output columns (examples). A source with a
    `select_columns(columns)` method (h5format's readers) is asked to read only those."""
    select = getattr(source, "select_columns", None)
    if select is not None:
        return select(columns)
    return lambda: ((X, Y[:, columns]) for X, Y in source())


def default_block_rows(n_components: int, n_targets: int) -> int:
    """Rows per block: about 128 MiB of float64 block arrays, at least 256 rows."""
    return int(np.clip(2**24 // (n_components + n_targets), 256, 16384))


def split_stats(
    chunks: Iterable[Chunk],
    val_every: int | None,
    *,
    backend: BackendName | Backend = "auto",
    gram: bool = True,
    block_rows: int | None = None,
) -> tuple[GramStats, GramStats | None]:
    """Training and validation statistics of a stream of (X, Y) chunks, in one pass.

    Row i is a validation row when i % val_every == 0 (deterministic, so the iterative solver
    can revisit the same split). With val_every=None all rows are training rows and the
    validation statistics are None. Small chunks are regrouped into blocks of block_rows rows.
    NaN or infinite outputs anywhere in the stream are reported together at the end.
    """
    stream = SplitStream(val_every, backend=backend, gram=gram, block_rows=block_rows)
    for X, Y in chunks:
        stream.push(X, Y)
    return stream.finish()


class SplitStream:
    """`split_stats` fed chunk by chunk, whose state can be saved between chunks and resumed in
    another process (`state`, `from_state`): what a run that collects and fits in rounds keeps.

    Rows are accumulated in blocks of exactly block_rows rows of each part, in stream order; the
    rows of a part's last, incomplete block are held until it fills. Whatever the chunking and
    wherever the stream was saved and resumed, the same rows in the same order therefore give
    the same statistics bit for bit as one `split_stats` pass over them.
    """

    def __init__(
        self,
        val_every: int | None,
        *,
        backend: BackendName | Backend = "auto",
        gram: bool = True,
        block_rows: int | None = None,
    ) -> None:
        if val_every is not None and val_every < 2:
            raise ValueError(f"val_every must be at least 2 (or None: no validation), got {val_every}")
        self.val_every = val_every
        self.backend = get_backend(backend)
        self.gram = gram
        self.block_rows = block_rows
        self.parts = ("train",) if val_every is None else ("train", "val")
        self.offset = 0  # rows pushed so far
        self.shape: tuple[int, int] | None = None
        self._stats: dict[str, GramStats] = {}
        self._pending: dict[str, _Blocks] = {}
        self._scratch = Scratch(self.backend.xp)
        self._bad_rows: list[np.ndarray] = []
        self._bad_examples: list[np.ndarray] = []

    def push(self, X: np.ndarray, Y: np.ndarray) -> None:
        """Add the next rows of the stream: X (r, N) 0/1 masks, Y (r, n) outputs."""
        X, Y = check_chunk(X, Y, offset=self.offset, shape=self.shape)
        if self.shape is None:
            self._start((X.shape[1], Y.shape[1]))
        rows, examples = nonfinite_outputs(Y)
        if rows.size:
            self._bad_rows.append(self.offset + rows)
            self._bad_examples.append(examples)
        if not self._bad_rows:
            for part, X_part, Y_part in _split_chunk(X, Y, self.offset, self.val_every):
                for block in self._pending[part].push(X_part, Y_part):
                    self._stats[part]._accumulate(*block, self._scratch)
        self.offset += X.shape[0]

    def finish(self) -> tuple[GramStats, GramStats | None]:
        """(train, val) statistics of every row pushed (val None without validation), the held
        rows added in place: the stream ends here."""
        self._check()
        for part in self.parts:
            for block in self._pending[part].flush():
                self._stats[part]._accumulate(*block, self._scratch)
        return self._stats["train"], self._stats.get("val")

    def snapshot(self) -> tuple[GramStats, GramStats | None]:
        """What `finish` would return now, as copies: the stream can go on."""
        self._check()
        copies = {}
        for part in self.parts:
            copies[part] = self._stats[part].copy()
            held = self._pending[part].held()
            if held is not None:
                copies[part]._accumulate(*held, self._scratch)
        return copies["train"], copies.get("val")

    def state(self) -> dict[str, Any]:
        """The stream's state as numpy arrays and numbers (keys "<part>/<field>" for each part's
        statistics and held rows), for `from_state`."""
        self._check()
        state: dict[str, Any] = {"offset": self.offset, "n_components": self.shape[0], "n_examples": self.shape[1],
                                 "val_every": 0 if self.val_every is None else self.val_every,
                                 "block_rows": self._stats["train"].block_rows, "gram": self.gram}
        to_numpy = self.backend.to_numpy
        for part in self.parts:
            stats = self._stats[part]
            state[f"{part}/count"] = stats.count
            state.update({f"{part}/{k}": to_numpy(v) for k, v in stats._arrays().items() if v is not None})
            held = self._pending[part].held()
            state[f"{part}/held_x"], state[f"{part}/held_y"] = held or (
                np.zeros((0, self.shape[0]), bool), np.zeros((0, self.shape[1]), np.float32))
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any], *, backend: BackendName | Backend = "auto") -> SplitStream:
        """The stream whose `state()` this is, ready for more rows."""
        val_every = int(state["val_every"]) or None
        stream = cls(val_every, backend=backend, gram=bool(state["gram"]), block_rows=int(state["block_rows"]))
        stream._start((int(state["n_components"]), int(state["n_examples"])))
        xp = stream.backend.xp
        for part in stream.parts:
            stats = stream._stats[part]
            stats.count = int(state[f"{part}/count"])
            for key, value in stats._arrays().items():
                if value is not None:
                    setattr(stats, key, xp.asarray(state[f"{part}/{key}"], dtype=xp.float64))
            stream._pending[part].push(np.asarray(state[f"{part}/held_x"], dtype=bool),
                                       np.asarray(state[f"{part}/held_y"]))
        stream.offset = int(state["offset"])
        return stream

    def _start(self, shape: tuple[int, int]) -> None:
        self.shape = shape
        for part in self.parts:
            self._stats[part] = GramStats(*shape, backend=self.backend, gram=self.gram, block_rows=self.block_rows)
            self._pending[part] = _Blocks(self._stats[part].block_rows)

    def _check(self) -> None:
        if self._bad_rows:
            raise _nonfinite_error(np.concatenate(self._bad_rows), np.unique(np.concatenate(self._bad_examples)))
        if self.shape is None:
            raise ValueError("the chunk stream is empty: no masks to fit")


def iter_part(
    chunks: Iterable[Chunk], part: Part, val_every: int | None, block_rows: int
) -> Iterator[Chunk]:
    """The rows of one part ("all", "train" or "val") of a chunk stream, in blocks of block_rows."""
    blocks = _Blocks(block_rows)
    offset = 0
    for X, Y in chunks:
        X, Y = np.asarray(X), np.asarray(Y)
        split = _split_chunk(X, Y, offset, None if part == "all" else val_every)
        for name, X_part, Y_part in split:
            if part in ("all", name):
                yield from blocks.push(X_part, Y_part)
        offset += X.shape[0]
    yield from blocks.flush()


def _split_chunk(
    X: np.ndarray, Y: np.ndarray, offset: int, val_every: int | None
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The training and validation rows of a chunk that starts at row `offset` of its stream.

    Row i is a validation row when i % val_every == 0; with val_every=None all rows train.
    """
    if val_every is None:
        return [("train", X, Y)]
    is_val = np.arange(offset, offset + X.shape[0]) % val_every == 0
    return [("train", X[~is_val], Y[~is_val]), ("val", X[is_val], Y[is_val])]


def check_chunk(
    X: Any, Y: Any, *, offset: int = 0, shape: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """X as a bool mask array and Y as a float array, after checking them.

    Raises ValueError, naming rows by their index in the whole stream (offset + local index),
    for: shapes that are not (r, N) and (r, n); N or n different from `shape` (chunks from
    different component or example sets); masks that are not 0/1. Non-finite outputs are
    found by `nonfinite_outputs`, so that a stream can report all of them at once.
    """
    X, Y = np.asarray(X), np.asarray(Y)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(
            "a chunk must be X (rows, components) and Y (rows, examples) with the same rows; "
            f"got X {X.shape} and Y {Y.shape} at row {offset}"
        )
    if shape is not None and (X.shape[1], Y.shape[1]) != shape:
        raise ValueError(
            f"chunk at row {offset} has {X.shape[1]} components and {Y.shape[1]} examples, but "
            f"earlier chunks have {shape[0]} and {shape[1]}: all chunks must come from the same "
            "component and example sets"
        )
    if X.dtype != bool:
        as_bool = X.astype(bool)
        if not np.array_equal(as_bool, X):
            raise ValueError(
                f"masks X must be 0/1 (1 = ablated); the chunk at row {offset} has other values"
            )
        X = as_bool
    if not np.issubdtype(Y.dtype, np.floating):
        Y = Y.astype(np.float64)
    return X, Y


def nonfinite_outputs(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the rows and of the examples (columns) of Y holding NaN or infinite values."""
    bad = ~np.isfinite(Y)
    if not bad.any():
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.intp)
    return np.flatnonzero(bad.any(axis=1)), np.flatnonzero(bad.any(axis=0))


def _nonfinite_error(rows: np.ndarray, examples: np.ndarray) -> ValueError:
    return ValueError(
        f"model outputs Y are NaN or infinite at {rows.size} mask rows {format_indices(rows)} "
        f"and {examples.size} examples {format_indices(examples)}; recompute or drop those rows "
        "before fitting"
    )


class _Blocks:
    """Regroups row pieces into blocks of exactly `rows` rows (the last one may be shorter).

    Tiny chunks then still give efficient matrix products, and huge ones bounded temporaries.
    Pieces held back for the next block are copied, since a chunk reader may reuse its buffers.
    """

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._pieces: list[Chunk] = []
        self._count = 0

    def push(self, X: np.ndarray, Y: np.ndarray) -> list[Chunk]:
        out = []
        if self._count:
            need = self.rows - self._count
            self._hold(X[:need], Y[:need])
            X, Y = X[need:], Y[need:]
            if self._count == self.rows:
                out += self.flush()
        while X.shape[0] >= self.rows:
            out.append((X[: self.rows], Y[: self.rows]))
            X, Y = X[self.rows :], Y[self.rows :]
        self._hold(X, Y)
        return out

    def held(self) -> Chunk | None:
        """The rows held for the next block (None when there are none), without taking them."""
        if not self._pieces:
            return None
        Xs, Ys = zip(*self._pieces)
        return np.concatenate(Xs), np.concatenate(Ys)

    def flush(self) -> list[Chunk]:
        if not self._pieces:
            return []
        Xs, Ys = zip(*self._pieces)
        self._pieces, self._count = [], 0
        return [(np.concatenate(Xs), np.concatenate(Ys))]

    def _hold(self, X: np.ndarray, Y: np.ndarray) -> None:
        if X.shape[0]:
            self._pieces.append((X.copy(), Y.copy()))
            self._count += X.shape[0]


class Scratch:
    """Block-sized buffers reused from block to block, so that converting a block does not pay
    for page faults of fresh large arrays every time."""

    def __init__(self, xp: Any) -> None:
        self.xp = xp
        self._buffers: dict[str, Any] = {}

    def fill(self, name: str, values: Any, dtype: Any) -> Any:
        """`values` converted to `dtype`, in the buffer called `name` (grown when needed)."""
        buffer = self._buffers.get(name)
        rows, *rest = values.shape
        if buffer is None or buffer.shape[0] < rows or list(buffer.shape[1:]) != rest:
            buffer = self._buffers[name] = self.xp.empty(values.shape, dtype)
        out = buffer[:rows]
        out[...] = self.xp.asarray(values)
        return out


def _copy(a: Any) -> Any:
    return None if a is None else a.copy()


def format_indices(index: np.ndarray, limit: int = 10) -> str:
    """'[i, j, ...]' showing the first `limit` indices, for error messages."""
    shown = ", ".join(str(i) for i in index[:limit])
    return f"[{shown}{', ...' if index.size > limit else ''}]"
