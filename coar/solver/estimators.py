"""Fitting COAR attributions: the result type `Fit`, `fit` on data and `fit_stats` on statistics.

`fit` turns masks and outputs (in memory or streamed) into sufficient statistics in one pass and
hands them to `fit_stats`, which runs the estimator: OLS (the published one), or a ridge or
lasso path whose penalty is chosen per example on held-out masks and then refit on all masks.
The closed-form solvers work on the N x N Gram matrix; when that does not fit the memory budget,
iterative solvers stream the masks again for every product with X'X and never form it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import Any, Literal

import numpy as np

from coar.attributions import LinearModels
from coar.constants import SOLVER_METHODS, SolverMethod as Method

from .backend import Backend, BackendName, get_backend
from .iterative import Design, StreamedDesign, cg_solve
from .lasso import default_lasso_lambdas, lasso_solve, lipschitz
from .memory import MemoryLimit, arrays_budget, resident_bytes
from .ols import ols_factor, ols_solve
from .ridge import default_ridge_lambdas, ridge_path, ridge_solve
from .stats import (
    ChunkSource,
    GramStats,
    check_chunk,
    column_source,
    default_block_rows,
    format_indices,
    split_stats,
)

Solver = Literal["auto", "closed_form", "iterative"]
PathPoint = tuple[Any, Any, Any]  # (lambda per example, validation SSE per example, weights)
VAL_EVERY = 10
"""Ridge and lasso choose their penalty on every VAL_EVERY-th mask row (coar.solver.stats.split_stats)."""
_STREAM_BYTES = 16 << 24  # row blocks of masks and outputs in flight (default_block_rows)


@dataclass(frozen=True)
class Fit(LinearModels):
    """The solver's attributions of n examples over N components (coar.attributions.LinearModels:
    weight (n, N) and bias (n,), float32; masks encode x_i = 1 as "i ablated"), with how they were fit.

    lam: (n,) penalty used for each example, in the method's scikit-learn units (0 for OLS).
    score: (n,) validation R^2 of each example: the model fit on the training masks at the
        chosen lam, scored on the held-out masks (R^2 about their own mean). NaN when there was
        no validation (OLS, or a single lambda with val_every=None).
    method: "ols", "ridge" or "lasso".
    n_masks: the number of masks the final weights were fit on.
    """

    lam: np.ndarray
    score: np.ndarray
    method: str
    n_masks: int


@dataclass(frozen=True)
class FitPlan:
    """How a fit runs, chosen from the memory budget: the closed form or the iterative path,
    and how many examples each block of the fit takes (peak memory grows with the block, not
    with n)."""

    closed_form: bool
    example_block: int
    n_components: int
    n_examples: int
    budget: MemoryLimit
    peak_bytes: int  # estimated peak of the solver's arrays

    @property
    def n_blocks(self) -> int:
        return -(-self.n_examples // self.example_block)

    def __str__(self) -> str:
        path = "closed form (Gram matrix)" if self.closed_form else "iterative (streamed products, no Gram matrix)"
        return (
            f"solver path: {path}; {self.n_blocks} block(s) of at most {self.example_block} of "
            f"{self.n_examples} examples; estimated peak {self.peak_bytes / 1e9:.2f} GB; "
            f"memory budget {self.budget}"
        )


def plan_fit(
    n_components: int,
    n_examples: int,
    method: Method = "ols",
    *,
    backend: BackendName | Backend = "auto",
    solver: Solver = "auto",
    max_memory_bytes: int | None = None,
    example_block: int | None = None,
) -> FitPlan:
    """Choose the solver path and the example block for a fit of N components and n examples.

    The budget is max_memory_bytes, or from the backend's memory: for numpy the job's limit (the
    smallest of its cgroup limit, SLURM allocation and physical memory) less the process's own
    resident memory, measured now, and a margin (coar.solver.memory.arrays_budget), for cupy
    half the GPU's. solver="auto" takes the closed form when its N x N matrices and a block of one
    example fit, with as many examples per block as fit (all of them when possible);
    `example_block` fixes the block instead.
    """
    _check_method(method)
    if solver not in ("auto", "closed_form", "iterative"):
        raise ValueError(f"solver must be 'auto', 'closed_form' or 'iterative', got {solver!r}")
    if example_block is not None and (isinstance(example_block, bool) or example_block < 1):
        raise ValueError(f"example_block must be a positive integer or None, got {example_block!r}")
    if max_memory_bytes is None:
        found = get_backend(backend).memory()
        if found.source == "GPU memory":  # may be shared; the process's own memory is on the host
            budget = MemoryLimit(found.bytes // 2, f"half of {found}")
        else:
            budget = arrays_budget(found, resident_bytes())
    else:
        budget = MemoryLimit(int(max_memory_bytes), "max_memory_bytes given")
    closed = solver == "closed_form" or (
        solver == "auto" and closed_form_bytes(n_components, 1, method) <= budget.bytes
    )
    need = partial(closed_form_bytes if closed else iterative_bytes, n_components, method=method)
    if example_block is None:
        fixed = need(n_targets=0)
        per_example = need(n_targets=1) - fixed
        example_block = max(1, (budget.bytes - fixed) // per_example)
    block = int(min(example_block, n_examples))
    if max_memory_bytes is None and need(n_targets=block) > budget.bytes:
        raise ValueError(f"the fit of {n_components} components needs at least {need(n_targets=block) / 1e9:.2f} GB "
                         f"for its arrays but its memory budget is {budget}; run it with more memory")
    return FitPlan(closed, block, n_components, n_examples, budget, need(n_targets=block))


def fit(
    data: ChunkSource | tuple[np.ndarray, np.ndarray],
    method: Method = "ols",
    **options: Any,
) -> Fit:
    """Fit every example's linear model y ~ x @ w + b on masks X (m x N) and outputs Y (m x n).

    All of `fit_blocks` at once: the blocks' results are joined into one Fit (its memory then
    grows with n; write the blocks as they come instead when that matters, as `coar fit` does).
    """
    blocks = [result for _, result in fit_blocks(data, method, **options)]
    first = blocks[0]
    return Fit(
        weight=np.concatenate([b.weight for b in blocks]),
        bias=np.concatenate([b.bias for b in blocks]),
        lam=np.concatenate([b.lam for b in blocks]),
        score=np.concatenate([b.score for b in blocks]),
        method=first.method,
        n_masks=first.n_masks,
    )


def fit_blocks(
    data: ChunkSource | tuple[np.ndarray, np.ndarray],
    method: Method = "ols",
    *,
    lambdas: Any | None = None,
    val_every: int | None = VAL_EVERY,
    backend: BackendName | Backend = "auto",
    solver: Solver = "auto",
    max_memory_bytes: int | None = None,
    example_block: int | None = None,
    plan: FitPlan | None = None,
    tol: float | None = None,
    max_iter: int = 1000,
    block_rows: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Iterator[tuple[int, Fit]]:
    """Fit every example's linear model, block of examples by block: yields (first example of
    the block, its Fit), each as soon as it is solved.

    data: a tuple (X, Y) of in-memory arrays (X masks m x N, Y outputs m x n), or a callable
        returning a fresh iterator of (X, Y) row chunks (called once per pass; it must yield
        the same rows in the same order every time). A source with a `select_columns(slice)`
        method (h5format's readers) reads only a block's output columns in its passes.
    method: "ols" (all masks, no penalty), "ridge" or "lasso" (penalty chosen per example).
    lambdas: penalties to choose from, in scikit-learn units; default: a 13-point grid, see
        `default_ridge_lambdas` and `default_lasso_lambdas`.
    val_every: row i is a validation row when i % val_every == 0 (ridge and lasso; OLS fits
        every row). None: no validation, only possible with a single lambda.
    backend: "numpy", "cupy" (GPU) or "auto" (cupy when installed with a visible GPU).
    solver, max_memory_bytes, example_block: see `plan_fit` (or pass its `plan`). The closed
        form computes the Gram matrix once, in the first block's pass over the data, and every
        later block makes one pass for its own cross products and reuses it (OLS factors it
        once, in place); the iterative path streams the masks again for every product.
    tol, max_iter: stopping rule of the iterative solvers (lasso always iterates); tol defaults
        to 1e-8 relative residual for conjugate gradients and 1e-7 * syy duality gap for lasso.
    block_rows: rows per block when accumulating statistics (default ~128 MiB of temporaries).
    progress: called with a line of text after each pass over the data.
    """
    _check_method(method)
    source = _as_source(data)
    backend = get_backend(backend)
    chunks = iter(source())
    first = next(chunks, None)
    if first is None:
        raise ValueError("the data hold no masks")
    n_components, n_targets = (a.shape[1] for a in check_chunk(*first))
    if plan is None:
        plan = plan_fit(n_components, n_targets, method, backend=backend, solver=solver,
                        max_memory_bytes=max_memory_bytes, example_block=example_block)
    elif (plan.n_components, plan.n_examples) != (n_components, n_targets):
        raise ValueError(
            f"the plan is for {plan.n_components} components x {plan.n_examples} examples but the "
            f"data have {n_components} x {n_targets}"
        )
    val_every = None if method == "ols" else val_every
    block_rows = block_rows or default_block_rows(n_components, plan.example_block)
    shared = None
    for start in range(0, n_targets, plan.example_block):
        columns = slice(start, min(n_targets, start + plan.example_block))
        part_source = column_source(source, columns)
        # The first block continues the pass that found the data's shape.
        stream = ((X, Y[:, columns]) for X, Y in chain([first], chunks)) if start == 0 else part_source()
        gram = plan.closed_form and shared is None
        train, val = split_stats(stream, val_every, backend=backend, gram=gram, block_rows=block_rows)
        if progress is not None:
            what = "the Gram matrix and cross products" if gram else "cross products"
            progress(f"examples {columns.start}..{columns.stop}: {what} of {train.count + (val.count if val else 0)} rows")
        if not plan.closed_form:
            train = StreamedDesign(train, part_source, "all" if val is None else "train", val_every)
            val = None if val is None else StreamedDesign(val, part_source, "val", val_every)
            yield start, _Shared(train, val).fit(method, train, val, lambdas, tol, max_iter)
            continue
        if shared is None:
            shared = _Shared(train, val, owned=True)
        moments = train.moments(), None if val is None else val.moments()
        del train, val  # the shared Gram matrices are now held (and perhaps factored) by `shared` alone
        yield start, shared.fit(method, *moments, lambdas, tol, max_iter)


def fit_stats(
    train: Design,
    method: Method = "ols",
    *,
    val: Design | None = None,
    lambdas: Any | None = None,
    tol: float | None = None,
    max_iter: int = 1000,
) -> Fit:
    """Fit from statistics: `train` (and, to choose a penalty, `val`) from `split_stats`, or a
    merge of shards' GramStats, or StreamedDesigns for the iterative solvers.

    Components that never vary in the masks get weight 0 (with a warning). Ridge and lasso
    choose each example's lambda by validation SSE (ties go to the larger lambda), then refit
    on train and val rows together at that lambda. The statistics are left unchanged.
    """
    _check_method(method)
    if method == "ols" and (val is not None or lambdas is not None):
        raise ValueError(
            "OLS has no penalty to choose: pass all rows as `train`, without `val` or `lambdas`"
        )
    return _Shared(train, val).fit(method, train, val, lambdas, tol, max_iter)


class _Shared:
    """What every example block of one fit shares: the components that vary in the masks and,
    for the closed form, the N x N matrices (Gram matrices of the training, validation and all
    rows, restricted to those components; the OLS factor once computed).

    `fit` solves one block from its statistics; their own Gram matrices, if any, are ignored in
    favour of the shared ones. With owned=True the shared matrices may be overwritten (OLS
    factors the Gram matrix in place); otherwise they belong to the caller and stay intact.
    """

    def __init__(self, train: Design, val: Design | None, *, owned: bool = False) -> None:
        full = train if val is None else train.merged(val)
        self.n_components = train.n_components
        self.active = _active_components(full)
        self.dense = _dense(train)
        self.owned = owned or (self.dense and self.active is not None and val is None)
        self._factor = None
        self._grams: dict[str, Any] = {}
        if self.dense:
            parts = {"full": full} if val is None else {"train": train, "val": val, "full": full}
            self._grams = {k: self._restrict(v).sxx for k, v in parts.items()}
            self._grams.setdefault("train", self._grams["full"])

    def fit(
        self, method: Method, train: Design, val: Design | None, lambdas: Any, tol: float | None, max_iter: int
    ) -> Fit:
        if self.dense:  # the block's own Gram matrices, if any, are neither copied nor used
            train, val = train.moments(), None if val is None else val.moments()
        full = train if val is None else train.merged(val)
        train, full = self._restrict(train), self._restrict(full)
        val = None if val is None else self._restrict(val)
        if method == "ols":
            lam, score, W = self._ols(full, tol, max_iter)
        else:
            if self.dense:
                train, full = train.with_gram(self._grams["train"]), full.with_gram(self._grams["full"])
                val = None if val is None else val.with_gram(self._grams["val"])
            lam, score, W = _penalised(method, train, val, full, lambdas, tol, max_iter)
        to_numpy = full.backend.to_numpy
        weight = _scatter(to_numpy(W), self.active, self.n_components)
        return Fit(
            weight=np.ascontiguousarray(weight.T, dtype=np.float32),
            bias=to_numpy(full.intercept(W)).astype(np.float32),
            lam=to_numpy(lam).astype(np.float64),
            score=to_numpy(score).astype(np.float64),
            method=method,
            n_masks=full.count,
        )

    def _restrict(self, design: Design) -> Design:
        return design if self.active is None else design.take(self.active)

    def _ols(self, full: Design, tol: float | None, max_iter: int) -> tuple[Any, Any, Any]:
        """(lam = 0, score = NaN, W) of OLS on all rows; the dense factor is computed once."""
        xp = full.backend.xp
        _require_overdetermined(full)
        lam = xp.zeros(full.n_targets)
        if not self.dense:
            W = _iterative("ols", tol, max_iter)(full, lam)
        else:
            if self._factor is None:
                gram = full.with_gram(self._grams.pop("full"))
                self._grams.clear()  # OLS needs nothing else N x N: keep the factor alone
                self._factor = ols_factor(gram, overwrite=self.owned)
            W = ols_solve(full, self._factor)
        return lam, xp.full(full.n_targets, np.nan), W


def closed_form_bytes(n_components: int, n_targets: int, method: Method) -> int:
    """Estimated peak memory of the closed-form solvers for a block of n_targets examples:
    N x N matrices (OLS: the Gram matrix, factored in place, and a temporary of its update;
    paths: the training, validation and full Gram matrices, eigenvectors and rotated copies),
    N x n ones (cross products, weights, solver state) and the streamed row blocks."""
    square = 2 if method == "ols" else 7
    return 8 * (square * n_components**2 + 12 * n_components * n_targets) + _STREAM_BYTES


def iterative_bytes(n_components: int, n_targets: int, method: Method) -> int:
    """Estimated peak memory of the iterative solvers for a block of n_targets examples: N x n
    arrays (cross products, iterates, search directions) and the streamed row blocks."""
    return 8 * 12 * n_components * n_targets + _STREAM_BYTES


def _as_source(data: ChunkSource | tuple[np.ndarray, np.ndarray]) -> ChunkSource:
    if callable(data):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        X, Y = data
        return lambda: iter([(X, Y)])
    raise TypeError(
        "data must be a tuple (X, Y) of arrays or a callable returning an iterator of (X, Y) "
        "chunks (called once per pass, so a plain generator object will not do)"
    )


def _check_method(method: str) -> None:
    if method not in SOLVER_METHODS:
        raise ValueError(f"method must be one of {list(SOLVER_METHODS)}, got {method!r}")


def _dense(design: Design) -> bool:
    return isinstance(design, GramStats) and design.sxx is not None


def _active_components(full: Design) -> np.ndarray | None:
    """Indices of components that vary in the masks, or None when all do (warns otherwise).

    A 0/1 column with c ones in m rows has centred sum of squares c (m - c) / m: exactly 0 when
    the component is never or always ablated, else at least (m - 1) / m >= 1/2. The data say
    nothing about a constant component, so its weight is set to 0 (the minimum-norm choice).
    """
    diag = full.backend.to_numpy(full.sxx_diag)
    constant = np.flatnonzero(diag < 0.5)
    if constant.size == 0:
        return None
    if constant.size == diag.size:
        raise ValueError("no component varies across the masks: each is never or always ablated")
    warnings.warn(
        f"{constant.size} of {diag.size} components are never or always ablated in the masks, so "
        "the data say nothing about them; their weight is set to 0: components "
        + format_indices(constant, 20),
        RuntimeWarning,
        stacklevel=3,
    )
    return np.flatnonzero(diag >= 0.5)


def _scatter(W: np.ndarray, active: np.ndarray | None, n_components: int) -> np.ndarray:
    if active is None:
        return W
    full = np.zeros((n_components, W.shape[1]), dtype=W.dtype)
    full[active] = W
    return full


def _require_overdetermined(full: Design) -> None:
    if full.count <= full.n_components:
        raise ValueError(
            f"OLS on {full.count} masks and {full.n_components} components is underdetermined: "
            "it needs more masks than components (m > N), else the weights are not unique; use "
            "method='ridge' or 'lasso', or draw more masks"
        )


def _penalised(
    method: Method,
    train: Design,
    val: Design | None,
    full: Design,
    lambdas: Any | None,
    tol: float | None,
    max_iter: int,
) -> tuple[Any, Any, Any]:
    """(lam, validation R^2, W) of ridge or lasso: each example's lambda chosen on `val` (or
    the single lambda given, without validation), then the fit on `full` at that lambda."""
    xp = full.backend.xp
    grid = xp.asarray(_lambda_grid(method, train, lambdas))
    if val is None:
        if grid.shape[0] > 1:
            raise ValueError(
                "choosing among several lambdas needs validation rows: set val_every (fit) "
                "or pass val (fit_stats), or give a single lambda"
            )
        W = _solve(method, full, grid[0], None, tol, max_iter)
        return grid[0], xp.full(full.n_targets, np.nan), W
    lam, sse, W0 = _select(_path(method, train, val, grid, tol, max_iter))
    positive = val.syy > 0  # R^2 is undefined for an example constant on the validation rows
    score = xp.where(positive, 1 - sse / xp.where(positive, val.syy, 1.0), np.nan)
    return lam, score, _solve(method, full, lam, W0, tol, max_iter)


def _lambda_grid(method: Method, train: Design, lambdas: Any | None) -> np.ndarray:
    """Penalties to try, L x n (one column per example), each column in decreasing order."""
    if lambdas is None:
        grid = default_ridge_lambdas(train) if method == "ridge" else default_lasso_lambdas(train)
    else:
        grid = np.sort(np.asarray(lambdas, dtype=np.float64).ravel())[::-1]
        if grid.size == 0 or not np.all(np.isfinite(grid) & (grid > 0)):
            raise ValueError(f"lambdas must be positive finite numbers, got {lambdas!r}")
    grid = grid if grid.ndim == 2 else grid[:, None]
    return np.ascontiguousarray(np.broadcast_to(grid, (grid.shape[0], train.n_targets)))


def _iterative(
    method: Method, tol: float | None, max_iter: int, design: Design | None = None
) -> Callable[..., Any]:
    """The iterative solver of a method: solve(design, lam, W0=None) -> W.

    Given the design it will run on, lasso's step size is computed once for all its calls.
    """
    options: dict[str, Any] = {"max_iter": max_iter} | ({} if tol is None else {"tol": tol})
    if method != "lasso":
        return partial(cg_solve, **options)
    if design is not None:
        options["step"] = 1.0 / lipschitz(design)
    return partial(lasso_solve, **options)


def _path(
    method: Method, train: Design, val: Design, grid: Any, tol: float | None, max_iter: int
) -> Iterator[PathPoint]:
    if method == "ridge" and _dense(train):
        return ridge_path(train, val, grid)
    return _warm_path(_iterative(method, tol, max_iter, train), train, val, grid)


def _warm_path(
    solve: Callable[..., Any], train: Design, val: Design, grid: Any
) -> Iterator[PathPoint]:
    """Solve at each lambda, warm-started from the previous one, and score on `val`."""
    W = None
    for lam in grid:
        W = solve(train, lam, W)
        yield lam, val.sse(W, train.intercept(W)), W


def _select(path: Iterator[PathPoint]) -> PathPoint:
    """Per example, the path point with the smallest validation SSE (first one on ties)."""
    best_lam = best_sse = best_W = None
    for lam, sse, W in path:
        if best_sse is None:
            best_lam, best_sse = lam.copy(), sse.copy()
            best_W = None if W is None else W.copy()
            continue
        better = sse < best_sse
        best_lam[better] = lam[better]
        best_sse[better] = sse[better]
        if W is not None:
            best_W[:, better] = W[:, better]
    return best_lam, best_sse, best_W


def _solve(
    method: Method, full: Design, lam: Any, W0: Any, tol: float | None, max_iter: int
) -> Any:
    """Weights on all rows at each example's lambda (ridge: closed form when dense)."""
    if method == "ridge" and _dense(full):
        return ridge_solve(full, lam)
    return _iterative(method, tol, max_iter)(full, lam, W0)
