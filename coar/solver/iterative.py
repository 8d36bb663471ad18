"""The iterative path, for when the N x N Gram matrix does not fit in memory.

`StreamedDesign` stands in for Gram statistics: it keeps the moments of its rows (means, Sxy,
syy and the diagonal of Sxx, all O(N n)) and computes every product with Sxx, and every residual
sum of squares, by streaming the rows again, so X'X is never formed. `cg_solve` solves the
(ridge-)regularised normal equations for all examples at once by batched conjugate gradients on
those products; `LiveColumns` is the per-example bookkeeping it shares with the lasso solver.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from .backend import Backend
from .stats import ChunkSource, GramStats, Part, Scratch, column_dot, iter_part


class StreamedDesign:
    """Rows of one part ("all", "train" or "val") of a re-iterable chunk source, used by passes.

    `stats` are the moments of exactly those rows (a GramStats built with gram=False). The
    source must yield the same rows in the same order every time it is called. `columns`
    restricts the masks to those component indices (see `take`).
    """

    def __init__(
        self,
        stats: GramStats,
        source: ChunkSource,
        part: Part = "all",
        val_every: int | None = None,
        columns: np.ndarray | None = None,
    ) -> None:
        self.stats = stats
        self.source = source
        self.part = part
        self.val_every = val_every
        self.columns = columns

    @property
    def backend(self) -> Backend:
        return self.stats.backend

    @property
    def count(self) -> int:
        return self.stats.count

    @property
    def n_components(self) -> int:
        return self.stats.n_components

    @property
    def n_targets(self) -> int:
        return self.stats.n_targets

    @property
    def mean_x(self) -> Any:
        return self.stats.mean_x

    @property
    def sxx_diag(self) -> Any:
        return self.stats.sxx_diag

    @property
    def sxy(self) -> Any:
        return self.stats.sxy

    @property
    def syy(self) -> Any:
        return self.stats.syy

    def intercept(self, W: Any) -> Any:
        return self.stats.intercept(W)

    def gram_matmul(self, P: Any) -> Any:
        """Sxx @ P in one pass: sum over rows of (x - mean_x) ((x - mean_x)'P)."""
        xp = self.backend.xp
        shift = self.mean_x @ P
        acc = xp.zeros((self.n_components, P.shape[1]))
        total = xp.zeros(P.shape[1])
        for xd, _ in self._blocks():
            Q = xd @ P - shift
            acc += xd.T @ Q
            total += xp.sum(Q, axis=0)
        return acc - xp.outer(self.mean_x, total)

    def sse(self, W: Any, b: Any) -> Any:
        """Sum over the rows of squared residuals of y = x @ W + b, per target, in one pass."""
        xp = self.backend.xp
        total = xp.zeros(self.n_targets)
        for xd, yd in self._blocks():
            R = yd - xd @ W - b
            total += column_dot(xp, R, R)
        return total

    def take(self, components: np.ndarray) -> StreamedDesign:
        """The same rows with the masks restricted to the given component indices."""
        columns = components if self.columns is None else self.columns[components]
        return StreamedDesign(
            self.stats.take(components), self.source, self.part, self.val_every, columns
        )

    def merged(self, other: StreamedDesign) -> StreamedDesign:
        """All rows, from the training and validation parts of the same source."""
        if other.source is not self.source or {self.part, other.part} != {"train", "val"}:
            raise ValueError("only the train and val parts of one source can be merged")
        return StreamedDesign(
            self.stats.merged(other.stats), self.source, "all", self.val_every, self.columns
        )

    def _blocks(self) -> Iterator[tuple[Any, Any]]:
        """The rows as float64 arrays of the backend, block by block."""
        xp = self.backend.xp
        scratch = Scratch(xp)
        for X, Y in iter_part(self.source(), self.part, self.val_every, self.stats.block_rows):
            if self.columns is not None:
                X = X[:, self.columns]
            yield scratch.fill("masks", X, xp.float64), scratch.fill("outputs", Y, xp.float64)


Design = GramStats | StreamedDesign  # what the solvers run on: dense or streamed statistics


class LiveColumns:
    """Per-example bookkeeping of a solve batched over the columns (examples) of `out`.

    `retire` writes converged columns of the iterate into `out` and drops them from every
    state array, so the work per iteration shrinks as examples converge.
    """

    def __init__(self, out: Any, xp: Any) -> None:
        self.out = out
        self.live = xp.arange(out.shape[1])

    @property
    def finished(self) -> bool:
        return self.live.size == 0

    def retire(self, done: Any, X: Any, *state: Any) -> tuple[Any, ...]:
        """Store columns of X marked `done`; return X and `state` without those columns."""
        if not bool(done.any()):
            return (X, *state)
        self.out[:, self.live[done]] = X[:, done]
        keep = ~done
        self.live = self.live[keep]
        return tuple(a[..., keep] for a in (X, *state))

    def give_up(self, X: Any, solver: str, max_iter: int) -> None:
        """Store the last iterate of the unconverged columns and warn about them."""
        self.out[:, self.live] = X
        warnings.warn(
            f"{solver} did not converge for {self.live.size} of {self.out.shape[1]} examples in "
            f"{max_iter} iterations; their weights are the last iterate (raise max_iter or tol)",
            RuntimeWarning,
            stacklevel=3,
        )


def cg_solve(
    design: Design,
    lam: Any,
    W0: Any | None = None,
    *,
    tol: float = 1e-8,
    max_iter: int = 1000,
) -> Any:
    """Weights W (N x n) with (Sxx + lam[k] I) w_k = Sxy_k for every example k (lam[k] >= 0).

    Jacobi-preconditioned conjugate gradients, batched over examples: one product with Sxx per
    iteration for all unconverged examples. Example k stops when its residual norm is at most
    tol * ||Sxy_k||. W0 warm-starts the iteration (e.g. the solution at a nearby lambda).
    """
    xp = design.backend.xp
    lam = xp.asarray(lam, dtype=xp.float64)
    B = design.sxy
    W = xp.zeros_like(B) if W0 is None else W0.copy()
    R = B.copy() if W0 is None else B - design.gram_matmul(W) - lam * W
    inv_diag = 1.0 / (design.sxx_diag[:, None] + lam[None, :])
    bound = tol * xp.linalg.norm(B, axis=0)
    Z = inv_diag * R
    X, P, rz = W.copy(), Z, column_dot(xp, R, Z)
    columns = LiveColumns(W, xp)
    for _ in range(max_iter):
        done = xp.linalg.norm(R, axis=0) <= bound
        X, R, P, rz, inv_diag, lam, bound = columns.retire(done, X, R, P, rz, inv_diag, lam, bound)
        if columns.finished:
            return W
        AP = design.gram_matmul(P) + lam * P
        step = rz / column_dot(xp, P, AP)
        X = X + step * P
        R = R - step * AP
        Z = inv_diag * R
        rz_next = column_dot(xp, R, Z)
        P = Z + (rz_next / rz) * P
        rz = rz_next
    columns.give_up(X, "conjugate gradients", max_iter)
    return W
