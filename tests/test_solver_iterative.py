"""The iterative path: same answers as the closed form without ever forming X'X, and the
automatic choice between the two by memory budget."""

import numpy as np
import pytest

import coar.solver.estimators as estimators
from coar.solver import GramStats, StreamedDesign, closed_form_bytes, fit
from coar.solver.iterative import cg_solve


def planted(m=900, N=40, n=6, seed=0, rate=0.15):
    rng = np.random.default_rng(seed)
    X = rng.random((m, N)) < rate
    half = n // 2  # strong, quiet targets, then weak, noisy ones
    W = np.concatenate([rng.standard_normal((N, half)), 0.05 * rng.standard_normal((N, n - half))], 1)
    noise = np.array([0.1] * half + [2.0] * (n - half))
    Y = (X @ W + 1.0 + noise * rng.standard_normal((m, n))).astype(np.float32)
    return X, Y


class CountingSource:
    """A re-iterable chunk source that counts the passes made over it."""

    def __init__(self, X, Y, rows=64):
        self.X, self.Y, self.rows, self.passes = X, Y, rows, 0

    def __call__(self):
        self.passes += 1
        starts = range(0, len(self.X), self.rows)
        return ((self.X[i : i + self.rows], self.Y[i : i + self.rows]) for i in starts)


def assert_weights_close(actual, expected, rtol):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("method", ["ols", "ridge", "lasso"])
def test_iterative_solver_equals_closed_form(method):
    X, Y = planted()
    closed = fit(CountingSource(X, Y), method, solver="closed_form", backend="numpy", tol=1e-10)
    iterative = fit(CountingSource(X, Y), method, solver="iterative", backend="numpy", tol=1e-10)
    np.testing.assert_allclose(iterative.lam, closed.lam, rtol=1e-12)
    assert_weights_close(iterative.weight, closed.weight, 1e-5)
    np.testing.assert_allclose(iterative.bias, closed.bias, rtol=1e-5)
    np.testing.assert_allclose(iterative.score, closed.score, rtol=1e-5)


def test_iterative_solver_never_builds_a_gram_matrix(monkeypatch):
    built = []
    real_split = estimators.split_stats

    def spy(*args, **kwargs):
        train, val = real_split(*args, **kwargs)
        built.extend(s.sxx for s in (train, val) if s is not None)
        return train, val

    monkeypatch.setattr(estimators, "split_stats", spy)
    X, Y = planted()
    fit(CountingSource(X, Y), "ridge", solver="iterative", backend="numpy")
    assert built and all(sxx is None for sxx in built)


def test_auto_solver_streams_when_the_gram_matrix_exceeds_the_memory_budget():
    X, Y = planted()
    needed = closed_form_bytes(X.shape[1], Y.shape[1], "ols")
    smallest = closed_form_bytes(X.shape[1], 1, "ols")  # the Gram matrix and one example
    roomy, tight = CountingSource(X, Y), CountingSource(X, Y)
    a = fit(roomy, "ols", max_memory_bytes=needed, backend="numpy")
    b = fit(tight, "ols", max_memory_bytes=smallest - 1, backend="numpy", tol=1e-10)
    assert roomy.passes == 1  # closed form: one pass for the statistics
    assert tight.passes > 2  # iterative: one more pass per product with X'X
    assert_weights_close(b.weight, a.weight, 1e-5)


def test_auto_solver_blocks_examples_when_only_some_fit_beside_the_gram_matrix():
    X, Y = planted()
    budget = closed_form_bytes(X.shape[1], 4, "ols")  # room for 4 of the 6 examples
    plan = estimators.plan_fit(X.shape[1], Y.shape[1], "ols", max_memory_bytes=budget)
    assert plan.closed_form and plan.example_block == 4 and plan.n_blocks == 2
    source = CountingSource(X, Y)
    blocked = fit(source, "ols", max_memory_bytes=budget, backend="numpy")
    assert source.passes == 2  # the Gram matrix with block 1, then block 2's cross products
    whole = fit((X, Y), "ols", backend="numpy")
    np.testing.assert_allclose(blocked.weight, whole.weight, rtol=1e-10, atol=1e-10)


def test_iterative_solver_zeroes_constant_components_too():
    X, Y = planted()
    X[:, [5, 6]] = [False, True]
    with pytest.warns(RuntimeWarning, match=r"\[5, 6\]"):
        closed = fit((X, Y), "ols", solver="closed_form", backend="numpy")
    with pytest.warns(RuntimeWarning, match=r"\[5, 6\]"):
        iterative = fit((X, Y), "ols", solver="iterative", backend="numpy", tol=1e-10)
    assert np.all(iterative.weight[:, [5, 6]] == 0)
    assert_weights_close(iterative.weight, closed.weight, 1e-5)


def test_streamed_design_products_equal_the_gram_matrix():
    X, Y = planted(m=300)
    source = CountingSource(X, Y, rows=17)
    dense = GramStats.from_chunks(source(), backend="numpy")
    streamed = StreamedDesign(GramStats.from_chunks(source(), backend="numpy", gram=False), source)
    P = np.random.default_rng(0).standard_normal((X.shape[1], 3))
    np.testing.assert_allclose(streamed.gram_matmul(P), dense.sxx @ P, rtol=1e-10, atol=1e-9)
    W, b = np.tile(P[:, :1], Y.shape[1]), np.arange(Y.shape[1], dtype=float)
    np.testing.assert_allclose(streamed.sse(W, b), dense.sse(W, b), rtol=1e-10)


def test_conjugate_gradients_warn_when_they_stop_before_converging():
    X, Y = planted()
    stats = GramStats.from_chunks([(X, Y)], backend="numpy")
    with pytest.warns(RuntimeWarning, match=r"did not converge for 6 of 6 examples in 2 iterations"):
        cg_solve(stats, np.zeros(Y.shape[1]), max_iter=2, tol=1e-14)
