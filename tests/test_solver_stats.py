"""Streaming sufficient statistics: what coar.solver.stats promises."""

import numpy as np
import pytest

from coar.solver import GramStats, split_stats
from coar.solver.stats import check_chunk, iter_part


def problem(m=600, N=25, n=4, seed=0, rate=0.2):
    rng = np.random.default_rng(seed)
    X = rng.random((m, N)) < rate
    Y = (X @ rng.standard_normal((N, n)) + 50.0 + rng.standard_normal((m, n))).astype(np.float32)
    return X, Y


def chunked(X, Y, rows):
    return [(X[i : i + rows], Y[i : i + rows]) for i in range(0, len(X), rows)]


def reference(X, Y):
    """Centred statistics computed directly, in float64."""
    Xd, Yd = X.astype(np.float64), Y.astype(np.float64)
    Xc, Yc = Xd - Xd.mean(0), Yd - Yd.mean(0)
    return {
        "count": len(X),
        "mean_x": Xd.mean(0),
        "mean_y": Yd.mean(0),
        "sxx": Xc.T @ Xc,
        "sxx_diag": (Xc * Xc).sum(0),
        "sxy": Xc.T @ Yc,
        "syy": (Yc * Yc).sum(0),
    }


def assert_stats_equal(stats, expected):
    assert stats.count == expected["count"]
    for name in ("mean_x", "mean_y", "sxx", "sxx_diag", "sxy", "syy"):
        want = expected[name]
        np.testing.assert_allclose(getattr(stats, name), want, rtol=1e-12, atol=1e-9 * np.abs(want).max())


def test_statistics_equal_centred_products_of_the_data():
    X, Y = problem()
    assert_stats_equal(GramStats.from_chunks([(X, Y)], backend="numpy"), reference(X, Y))


@pytest.mark.parametrize("rows, block_rows", [(1, 64), (7, 50), (600, 128), (600, 10_000)])
def test_streaming_any_chunking_gives_the_in_memory_statistics(rows, block_rows):
    X, Y = problem()
    stats = GramStats.from_chunks(chunked(X, Y, rows), backend="numpy", block_rows=block_rows)
    assert_stats_equal(stats, reference(X, Y))


def test_update_chunk_by_chunk_equals_one_pass():
    X, Y = problem()
    stats = GramStats(X.shape[1], Y.shape[1], backend="numpy")
    for chunk in chunked(X, Y, 97):
        stats.update(*chunk)
    assert_stats_equal(stats, reference(X, Y))


def test_merged_shards_equal_statistics_of_the_concatenation():
    X, Y = problem()
    cuts = [0, 1, 130, 131, 400, 600]  # shards of 1, 129, 1, 269 and 200 rows
    shards = [
        GramStats.from_chunks([(X[a:b], Y[a:b])], backend="numpy") for a, b in zip(cuts, cuts[1:])
    ]
    merged = shards[0]
    for shard in shards[1:]:
        merged.merge(shard)
    assert_stats_equal(merged, reference(X, Y))


def test_merged_leaves_both_operands_unchanged():
    X, Y = problem()
    a = GramStats.from_chunks([(X[:200], Y[:200])], backend="numpy")
    b = GramStats.from_chunks([(X[200:], Y[200:])], backend="numpy")
    assert_stats_equal(a.merged(b), reference(X, Y))
    assert_stats_equal(a, reference(X[:200], Y[:200]))
    assert_stats_equal(b, reference(X[200:], Y[200:]))


def test_outputs_with_a_large_offset_keep_their_precision():
    # Centring per block and Chan's update avoid the cancellation of raw sums of squares.
    X, Y = problem(seed=3)
    Y = Y.astype(np.float64) + 1e6
    stats = GramStats.from_chunks(chunked(X, Y, 50), backend="numpy", block_rows=50)
    expected = reference(X, Y)
    np.testing.assert_allclose(stats.syy, expected["syy"], rtol=1e-9)
    scale = np.abs(expected["sxy"]).max()
    np.testing.assert_allclose(stats.sxy, expected["sxy"], rtol=1e-9, atol=1e-9 * scale)


def test_split_puts_every_row_with_index_divisible_by_val_every_in_validation():
    X, Y = problem()
    train, val = split_stats(chunked(X, Y, 33), 7, backend="numpy")
    is_val = np.arange(len(X)) % 7 == 0
    assert_stats_equal(train, reference(X[~is_val], Y[~is_val]))
    assert_stats_equal(val, reference(X[is_val], Y[is_val]))


def test_iter_part_yields_the_rows_of_the_split_in_order():
    X, Y = problem(m=100)
    is_val = np.arange(100) % 6 == 0
    for part, rows in (("train", ~is_val), ("val", is_val), ("all", slice(None))):
        blocks = list(iter_part(chunked(X, Y, 9), part, 6, block_rows=16))
        assert all(len(b[0]) <= 16 for b in blocks)
        np.testing.assert_array_equal(np.concatenate([b[0] for b in blocks]), X[rows])
        np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), Y[rows])


def test_sse_from_statistics_equals_residuals_summed_over_rows():
    X, Y = problem()
    rng = np.random.default_rng(1)
    W, b = rng.standard_normal((X.shape[1], Y.shape[1])), rng.standard_normal(Y.shape[1])
    stats = GramStats.from_chunks([(X, Y)], backend="numpy")
    residual = Y.astype(np.float64) - X @ W - b
    np.testing.assert_allclose(stats.sse(W, b), (residual**2).sum(0), rtol=1e-10)


def test_rotated_statistics_score_predictors_in_the_new_basis():
    X, Y = problem()
    stats = GramStats.from_chunks([(X, Y)], backend="numpy")
    basis = np.linalg.qr(np.random.default_rng(2).standard_normal((X.shape[1], X.shape[1])))[0]
    rng = np.random.default_rng(3)
    U, b = rng.standard_normal((X.shape[1], Y.shape[1])), rng.standard_normal(Y.shape[1])
    np.testing.assert_allclose(stats.rotated(basis).sse(U, b), stats.sse(basis @ U, b), rtol=1e-9)


def test_take_restricts_the_statistics_to_components():
    X, Y = problem()
    keep = np.array([0, 3, 4, 20])
    stats = GramStats.from_chunks([(X, Y)], backend="numpy").take(keep)
    assert_stats_equal(stats, reference(X[:, keep], Y))


def test_nan_or_infinite_outputs_are_reported_by_stream_row_and_example():
    X, Y = problem(m=40)
    Y[17, 2] = np.nan
    Y[23, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 mask rows \[17, 23\] and 2 examples \[0, 2\]"):
        GramStats.from_chunks(chunked(X, Y, 10), backend="numpy")


def test_chunks_with_a_different_component_count_are_refused():
    X, Y = problem(m=40)
    chunks = [(X[:20], Y[:20]), (X[20:, :-1], Y[20:])]
    with pytest.raises(ValueError, match="chunk at row 20 has 24 components .* earlier chunks have 25"):
        GramStats.from_chunks(chunks, backend="numpy")


def test_shards_with_a_different_component_count_do_not_merge():
    X, Y = problem(m=40)
    a = GramStats.from_chunks([(X, Y)], backend="numpy")
    b = GramStats.from_chunks([(X[:, :-1], Y)], backend="numpy")
    with pytest.raises(ValueError, match="different component or example sets"):
        a.merge(b)


def test_masks_must_be_zero_one():
    X, Y = problem(m=40)
    with pytest.raises(ValueError, match="0/1"):
        check_chunk(X * 2.0, Y)
    assert check_chunk(X.astype(np.uint8), Y)[0].dtype == bool


def test_an_empty_stream_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        GramStats.from_chunks([], backend="numpy")
