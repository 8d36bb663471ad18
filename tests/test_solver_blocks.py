"""The fit blocked by examples: every block shares one Gram matrix, and each example's answer is
the one an unblocked fit gives."""

import numpy as np
import pytest

from coar.solver import GramStats, fit, fit_stats
from coar.solver.estimators import fit_blocks


def planted(m=700, N=25, n=7, seed=1, rate=0.15):
    rng = np.random.default_rng(seed)
    X = rng.random((m, N)) < rate
    W = rng.standard_normal((N, n))
    Y = (X @ W + 2.0 + 0.3 * rng.standard_normal((m, n))).astype(np.float32)
    return X, Y


class CountingSource:
    """Chunks of 50 rows; counts the passes made over the data."""

    def __init__(self, X, Y):
        self.X, self.Y, self.passes = X, Y, 0

    def __call__(self):
        self.passes += 1
        return ((self.X[i : i + 50], self.Y[i : i + 50]) for i in range(0, len(self.X), 50))


@pytest.mark.parametrize("method", ["ols", "ridge", "lasso"])
def test_blocked_fit_equals_the_unblocked_fit(method):
    X, Y = planted()
    options = {"backend": "numpy", "tol": 1e-12, "max_iter": 20_000}
    whole = fit((X, Y), method, **options)
    blocked = fit(CountingSource(X, Y), method, example_block=3, **options)
    np.testing.assert_allclose(blocked.weight, whole.weight, rtol=1e-10, atol=1e-10 * np.abs(whole.weight).max())
    np.testing.assert_allclose(blocked.bias, whole.bias, rtol=1e-6)
    np.testing.assert_allclose(blocked.lam, whole.lam, rtol=1e-12)  # the same grid point chosen
    np.testing.assert_allclose(blocked.score, whole.score, rtol=1e-10)


def test_each_ols_block_is_exactly_the_fit_of_its_examples_alone():
    X, Y = planted()
    blocks = dict(fit_blocks(CountingSource(X, Y), "ols", example_block=3, backend="numpy", block_rows=128))
    assert sorted(blocks) == [0, 3, 6]
    for start, result in blocks.items():
        alone = fit((X, Y[:, start : start + 3]), "ols", backend="numpy", block_rows=128)
        np.testing.assert_array_equal(result.weight, alone.weight)
        np.testing.assert_array_equal(result.bias, alone.bias)


def test_one_block_is_the_fit_from_the_statistics_bit_for_bit():
    X, Y = planted()
    source = CountingSource(X, Y)
    blocked = fit(source, "ols", example_block=Y.shape[1], backend="numpy")
    assert source.passes == 1
    reference = fit_stats(GramStats.from_chunks(CountingSource(X, Y)(), backend="numpy"), "ols")
    np.testing.assert_array_equal(blocked.weight, reference.weight)
    np.testing.assert_array_equal(blocked.bias, reference.bias)


def test_the_gram_matrix_is_computed_once_and_each_later_block_passes_over_the_data_once():
    X, Y = planted()
    source = CountingSource(X, Y)
    fit(source, "ridge", example_block=2, backend="numpy")
    assert source.passes == 4  # 7 examples in blocks of 2


def test_fit_stats_leaves_the_callers_gram_matrix_intact():
    X, Y = planted()
    stats = GramStats.from_chunks([(X, Y)], backend="numpy")
    before = stats.sxx.copy()
    fit_stats(stats, "ols")
    np.testing.assert_array_equal(stats.sxx, before)


def test_constant_components_are_dropped_in_every_block():
    X, Y = planted()
    X[:, 4] = False
    with pytest.warns(RuntimeWarning, match=r"\[4\]"):
        blocked = fit(CountingSource(X, Y), "ols", example_block=2, backend="numpy")
    with pytest.warns(RuntimeWarning, match=r"\[4\]"):
        whole = fit((X, Y), "ols", backend="numpy")
    assert np.all(blocked.weight[:, 4] == 0)
    np.testing.assert_allclose(blocked.weight, whole.weight, rtol=1e-10, atol=1e-10 * np.abs(whole.weight).max())
