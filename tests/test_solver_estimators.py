"""Closed-form estimators of coar.solver: agreement with scikit-learn, per-example penalty
selection, streaming, and the answers on degenerate data."""

import warnings

import numpy as np
import pytest
from sklearn.linear_model import Lasso, LinearRegression, Ridge

from coar.solver import GramStats, fit, fit_stats, split_stats
from coar.solver.ridge import ridge_solve


def planted(m=800, N=30, n=5, seed=0, noise=0.5, rate=0.15):
    rng = np.random.default_rng(seed)
    X = rng.random((m, N)) < rate
    W = rng.standard_normal((N, n))
    Y = (X @ W + 3.0 + noise * rng.standard_normal((m, n))).astype(np.float32)
    return X, Y


def chunks_of(X, Y, rows):
    return lambda: ((X[i : i + rows], Y[i : i + rows]) for i in range(0, len(X), rows))


def assert_weights_close(actual, expected, rtol):
    """Equal to rtol relative to the largest weight (per-entry relative error is meaningless
    for weights near 0)."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * np.abs(expected).max())


def split_rows(m, val_every):
    is_val = np.arange(m) % val_every == 0
    return ~is_val, is_val


def test_ols_equals_sklearn_linear_regression():
    X, Y = planted()
    ours = fit((X, Y), "ols", backend="numpy")
    sk = LinearRegression().fit(X.astype(np.float64), Y.astype(np.float64))
    assert_weights_close(ours.weight, sk.coef_, 1e-6)
    np.testing.assert_allclose(ours.bias, sk.intercept_, rtol=1e-6)
    assert ours.method == "ols" and ours.n_masks == len(X)
    assert np.all(ours.lam == 0) and np.all(np.isnan(ours.score))


def test_ridge_at_one_lambda_equals_sklearn_ridge():
    X, Y = planted()
    ours = fit((X, Y), "ridge", lambdas=[7.0], val_every=None, backend="numpy")
    sk = Ridge(alpha=7.0).fit(X.astype(np.float64), Y.astype(np.float64))
    assert_weights_close(ours.weight, sk.coef_, 1e-6)
    np.testing.assert_allclose(ours.bias, sk.intercept_, rtol=1e-6)
    np.testing.assert_array_equal(ours.lam, 7.0)


def test_lasso_at_one_lambda_equals_sklearn_lasso_per_target():
    X, Y = planted()
    lam = 0.02
    tight = {"tol": 1e-12, "max_iter": 100_000}
    ours = fit((X, Y), "lasso", lambdas=[lam], val_every=None, backend="numpy", **tight)
    for k in range(Y.shape[1]):
        sk = Lasso(alpha=lam, **tight).fit(X.astype(np.float64), Y[:, k].astype(np.float64))
        assert_weights_close(ours.weight[k], sk.coef_, 1e-4)
        np.testing.assert_allclose(ours.bias[k], sk.intercept_, rtol=1e-4)
        assert (ours.weight[k] == 0).sum() == (sk.coef_ == 0).sum() > 0


def test_predict_applies_weights_and_bias():
    X, Y = planted()
    ours = fit((X, Y), "ols", backend="numpy")
    sk = LinearRegression().fit(X.astype(np.float64), Y.astype(np.float64))
    expected = sk.predict(X.astype(np.float64))
    np.testing.assert_allclose(ours.predict(X), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def mixed_noise_problem(seed=0):
    """Targets 0-3: large dense weights, little noise (want a small lambda); targets 4-7:
    tiny weights drowned in noise (want a large lambda)."""
    rng = np.random.default_rng(seed)
    m, N = 900, 40
    X = rng.random((m, N)) < 0.2
    W = np.concatenate([rng.standard_normal((N, 4)), 0.03 * rng.standard_normal((N, 4))], axis=1)
    noise = np.array([0.05] * 4 + [3.0] * 4)
    Y = (X @ W + noise * rng.standard_normal((m, 8))).astype(np.float32)
    return X, Y


def brute_force_validation(X, Y, lambdas, val_every, model):
    """Validation SSE (L x n) of `model(lam)` fit on the training rows, per target."""
    train, val = split_rows(len(X), val_every)
    Xd, Yd = X.astype(np.float64), Y.astype(np.float64)
    sse = []
    for lam in lambdas:
        pred = model(lam).fit(Xd[train], Yd[train]).predict(Xd[val])  # targets fit independently
        sse.append(((Yd[val] - pred) ** 2).sum(0))
    return np.array(sse)


def test_ridge_picks_each_examples_best_validation_lambda():
    X, Y = mixed_noise_problem()
    lambdas = np.logspace(-2, 4, 13)
    ours = fit((X, Y), "ridge", lambdas=lambdas, val_every=5, backend="numpy")
    sse = brute_force_validation(X, Y, lambdas, 5, lambda lam: Ridge(alpha=lam))
    np.testing.assert_allclose(ours.lam, lambdas[sse.argmin(0)])
    assert ours.lam[:4].max() < ours.lam[4:].min()  # the two kinds of target need different lambdas
    _, val = split_rows(len(X), 5)
    yv = Y[val].astype(np.float64)
    r2 = 1 - sse.min(0) / ((yv - yv.mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(ours.score, r2, rtol=1e-8)


def test_ridge_refits_on_all_masks_at_each_examples_lambda():
    X, Y = mixed_noise_problem()
    ours = fit((X, Y), "ridge", val_every=5, backend="numpy")
    sk = Ridge(alpha=ours.lam).fit(X.astype(np.float64), Y.astype(np.float64))
    assert_weights_close(ours.weight, sk.coef_, 1e-6)
    np.testing.assert_allclose(ours.bias, sk.intercept_, rtol=1e-6)
    assert ours.n_masks == len(X)


@pytest.mark.parametrize("distinct", [1, 3, 12])  # Cholesky per lambda, or one eigh for many
def test_ridge_solve_with_a_lambda_per_example_equals_sklearn(distinct):
    X, Y = planted(n=12)
    lam = np.logspace(-1, 2, distinct)[np.arange(12) % distinct]
    W = ridge_solve(GramStats.from_chunks([(X, Y)], backend="numpy"), lam)
    sk = Ridge(alpha=lam).fit(X.astype(np.float64), Y.astype(np.float64))
    assert_weights_close(W.T, sk.coef_, 1e-9)


def test_default_ridge_grid_is_relative_to_the_mean_eigenvalue():
    X, Y = mixed_noise_problem()
    ours = fit((X, Y), "ridge", val_every=5, backend="numpy")
    train, _ = split_rows(len(X), 5)
    Xt = X[train].astype(np.float64)
    scale = np.trace(np.cov(Xt.T, bias=True)) * len(Xt) / X.shape[1]
    assert np.all((ours.lam >= 1e-4 * scale * 0.999) & (ours.lam <= 1e2 * scale * 1.001))
    assert ours.lam[:4].max() < ours.lam[4:].min()


def test_lasso_picks_each_examples_best_validation_lambda_and_refits():
    X, Y = mixed_noise_problem()
    lambdas = np.logspace(-3, 0, 7)
    ours = fit((X, Y), "lasso", lambdas=lambdas, val_every=5, tol=1e-12, max_iter=10**5, backend="numpy")
    model = lambda lam: Lasso(alpha=lam, tol=1e-12, max_iter=100_000)  # noqa: E731
    sse = brute_force_validation(X, Y, lambdas, 5, model)
    # Large lambdas tie (all weights 0) on the noisy targets, so compare validation errors.
    chosen = np.searchsorted(lambdas, ours.lam)
    np.testing.assert_allclose(sse[chosen, np.arange(Y.shape[1])], sse.min(0), rtol=1e-9)
    assert ours.lam[:4].max() < ours.lam[4:].min()
    for k in range(Y.shape[1]):
        sk = model(ours.lam[k]).fit(X.astype(np.float64), Y[:, k].astype(np.float64))
        assert_weights_close(ours.weight[k], sk.coef_, 1e-4)


def test_default_lasso_grid_spans_each_examples_lambda_max():
    X, Y = mixed_noise_problem()
    ours = fit((X, Y), "lasso", val_every=5, backend="numpy")
    train, _ = split_rows(len(X), 5)
    Xt, Yt = X[train].astype(np.float64), Y[train].astype(np.float64)
    lam_max = np.abs((Xt - Xt.mean(0)).T @ (Yt - Yt.mean(0))).max(0) / len(Xt)
    assert np.all((ours.lam >= 1e-3 * lam_max * 0.999) & (ours.lam <= lam_max * 1.001))


@pytest.mark.parametrize("method", ["ols", "ridge", "lasso"])
def test_streaming_many_small_chunks_equals_in_memory(method):
    X, Y = planted(m=700)
    in_memory = fit((X, Y), method, backend="numpy")
    streamed = fit(chunks_of(X, Y, 13), method, backend="numpy", block_rows=40)
    np.testing.assert_allclose(streamed.lam, in_memory.lam, rtol=1e-12)
    assert_weights_close(streamed.weight, in_memory.weight, 1e-6)
    np.testing.assert_allclose(streamed.bias, in_memory.bias, rtol=1e-6)


def test_fit_on_merged_shard_statistics_equals_fit_on_all_rows():
    X, Y = planted()
    merged = GramStats(X.shape[1], Y.shape[1], backend="numpy")
    for a in range(0, len(X), 250):  # shards computed separately, e.g. on different machines
        merged.merge(GramStats.from_chunks([(X[a : a + 250], Y[a : a + 250])], backend="numpy"))
    expected = fit((X, Y), "ols", backend="numpy")
    assert_weights_close(fit_stats(merged, "ols").weight, expected.weight, 1e-9)


def test_components_never_or_always_ablated_get_weight_zero_with_a_warning():
    X, Y = planted()
    X[:, 4] = False
    X[:, 11] = True
    with pytest.warns(RuntimeWarning, match=r"2 of 30 components are never or always ablated.*\[4, 11\]"):
        ours = fit((X, Y), "ols", backend="numpy")
    assert np.all(ours.weight[:, [4, 11]] == 0)
    # The same answer as the minimum-norm least-squares solution.
    sk = LinearRegression().fit(X.astype(np.float64), Y.astype(np.float64))
    assert_weights_close(ours.weight, sk.coef_, 1e-6)
    np.testing.assert_allclose(ours.bias, sk.intercept_, rtol=1e-6)


@pytest.mark.parametrize("method", ["ridge", "lasso"])
def test_constant_components_get_weight_zero_in_penalised_paths(method):
    X, Y = planted()
    X[:, 0] = False
    with pytest.warns(RuntimeWarning, match=r"\[0\]"):
        ours = fit((X, Y), method, backend="numpy")
    assert np.all(ours.weight[:, 0] == 0) and np.all(np.isfinite(ours.weight))


def test_ols_with_no_more_masks_than_components_says_to_use_ridge():
    X, Y = planted(m=30, N=30)
    with pytest.raises(ValueError, match="needs more masks than components.*method='ridge'"):
        fit((X, Y), "ols", backend="numpy")


def test_ridge_works_with_fewer_masks_than_components():
    X, Y = planted(m=25, N=30)
    ours = fit((X, Y), "ridge", lambdas=[0.5], val_every=None, backend="numpy")
    sk = Ridge(alpha=0.5).fit(X.astype(np.float64), Y.astype(np.float64))
    assert_weights_close(ours.weight, sk.coef_, 1e-6)


def test_ols_on_collinear_components_says_they_are_collinear():
    X, Y = planted()
    X[:, 3] = X[:, 2]
    with pytest.raises(ValueError, match="collinear.*method='ridge'"):
        fit((X, Y), "ols", backend="numpy")


def test_nan_outputs_in_a_stream_name_every_bad_row_and_example():
    X, Y = planted(m=100)
    Y[17, 2] = np.nan
    Y[93, 0] = -np.inf
    with pytest.raises(ValueError, match=r"2 mask rows \[17, 93\] and 2 examples \[0, 2\]"):
        fit(chunks_of(X, Y, 10), "ols", backend="numpy")


def test_several_lambdas_without_validation_rows_is_an_error():
    X, Y = planted()
    with pytest.raises(ValueError, match="needs validation rows"):
        fit((X, Y), "ridge", val_every=None, backend="numpy")


@pytest.mark.parametrize("lambdas", [[0.0], [-1.0, 2.0], [np.inf]])
def test_lambdas_must_be_positive(lambdas):
    X, Y = planted()
    with pytest.raises(ValueError, match="positive"):
        fit((X, Y), "ridge", lambdas=lambdas, backend="numpy")


def test_unknown_method_or_data_are_refused():
    X, Y = planted()
    with pytest.raises(ValueError, match="method must be"):
        fit((X, Y), "elasticnet", backend="numpy")
    with pytest.raises(TypeError, match="callable"):
        fit(iter([(X, Y)]), "ols", backend="numpy")


def test_ols_fit_stats_refuses_validation_statistics():
    X, Y = planted()
    train, val = split_stats([(X, Y)], 10, backend="numpy")
    with pytest.raises(ValueError, match="no penalty to choose"):
        fit_stats(train, "ols", val=val)


def test_fit_emits_no_warning_on_well_posed_data():
    X, Y = planted()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("ols", "ridge", "lasso"):
            fit((X, Y), method, backend="numpy")
