"""coar.solver.surrogate.ProjectedQuadratic: COAR's linear model plus a quadratic form in a few
mask projections shared by all examples. What it must do: recover interactions it was given that
linear OLS cannot, reduce to OLS where there are none, be deterministic, and refuse bad input
with a message that says what is wrong."""

import numpy as np
import pytest

from coar.evaluate import correlation
from coar.solver import fit
from coar.solver.surrogate import ProjectedQuadratic


def planted_truth(N=40, n=12, seed=0):
    """A per-example linear part plus a per-example quadratic in two projections of the mask
    shared by all examples (exactly what the surrogate models, and OLS cannot), as a function
    of the masks."""
    rng = np.random.default_rng(seed)
    P = rng.standard_normal((N, 2))
    W = 0.05 * rng.standard_normal((N, n)) + P @ rng.standard_normal((2, n))  # attributions mostly along P
    strength = rng.uniform(0.5, 1.0, n)

    def truth(X):
        L = X @ P
        return X @ W + 1.0 + (L[:, :1] * L[:, 1:2]) * strength - 0.3 * L[:, :1] ** 2

    return truth


def planted_interaction(m=1500, N=40, n=12, seed=0, rate=0.15, noise=0.0):
    """Training masks at `rate` and the planted outputs (plus Gaussian noise)."""
    rng = np.random.default_rng(seed + 100)
    X = rng.random((m, N)) < rate
    return X, planted_truth(N, n, seed)(X) + noise * rng.standard_normal((m, n))


def heldout(N=40, m=400, rate=0.3, seed=1):
    """Masks at twice the training rate: the surrogate must extrapolate in the number ablated."""
    return np.random.default_rng(seed).random((m, N)) < rate


def test_recovers_a_shared_interaction_that_ols_cannot():
    X, Y = planted_interaction()
    Xh = heldout()
    Yh = planted_truth()(Xh)
    # The basis is estimated from the OLS weights, which the interaction itself tilts off the
    # planted plane: one projection more than planted recovers it.
    surrogate = ProjectedQuadratic(rank=3, penalty=0.0).fit(X, Y)
    ols = fit((X, Y), "ols", backend="numpy")
    assert np.all(correlation(Yh, surrogate.predict(Xh)) > 0.99)
    assert correlation(Yh, ols.predict(Xh)).mean() < 0.7  # the interaction is real: linear COAR misses it
    assert np.abs(surrogate.predict(Xh) - Yh).max() < 0.1 * np.abs(Yh).max()


def test_without_interactions_it_is_ols():
    rng = np.random.default_rng(3)
    X = rng.random((600, 25)) < 0.2
    Y = X @ rng.standard_normal((25, 6)) + 2.0 + 0.1 * rng.standard_normal((600, 6))
    surrogate = ProjectedQuadratic(rank=3, penalty=1e6).fit(X, Y)  # quadratic part penalised away
    ols = fit((X, Y), "ols", backend="numpy")
    np.testing.assert_allclose(surrogate.weight_, ols.weight, atol=1e-3)
    np.testing.assert_allclose(surrogate.predict(X), ols.predict(X), atol=1e-3)


def test_deterministic():
    X, Y = planted_interaction(noise=0.5)
    a = ProjectedQuadratic(rank=4).fit(X, Y).predict(heldout())
    b = ProjectedQuadratic(rank=4).fit(X, Y).predict(heldout())
    np.testing.assert_array_equal(a, b)


def test_shapes_of_the_fitted_model():
    X, Y = planted_interaction(noise=0.5)
    s = ProjectedQuadratic(rank=3).fit(X, Y)
    assert s.basis_.shape == (40, 3)
    assert s.weight_.shape == (12, 40)
    assert s.quad_.shape == (12, 6)  # r (r + 1) / 2 pairs
    assert s.bias_.shape == (12,)
    assert s.n_masks_ == len(X)
    assert s.predict(X[:7]).shape == (7, 12)


def test_constant_components_get_zero_weight_with_a_warning():
    X, Y = planted_interaction(noise=0.5)
    X = X.copy()
    X[:, 5] = False
    with pytest.warns(RuntimeWarning, match="1 of 40 components are never or always ablated"):
        s = ProjectedQuadratic(rank=2).fit(X, Y)
    assert np.all(s.weight_[:, 5] == 0)


@pytest.mark.parametrize(
    "masks, outputs, message",
    [
        (np.zeros(100), np.zeros((100, 3)), r"masks must be a 2-D array \(masks x components\), got shape \(100,\)"),
        (np.zeros((100, 5)), np.zeros(100), r"outputs must be a 2-D array .*reshape\(-1, 1\)"),
        (np.zeros((100, 5)), np.zeros((90, 3)), "masks have 100 rows but outputs have 90"),
        (np.full((100, 5), np.nan), np.zeros((100, 3)), "masks hold NaN"),
        (np.eye(100, 5), np.full((100, 3), np.inf), "outputs hold NaN or infinite"),
        (np.zeros((100, 5)), np.zeros((100, 3)), "no component varies"),
    ],
)
def test_refuses_bad_data(masks, outputs, message):
    with pytest.raises(ValueError, match=message):
        ProjectedQuadratic(rank=1).fit(masks, outputs)


@pytest.mark.filterwarnings("ignore:.*never or always ablated:RuntimeWarning")
def test_refuses_too_few_masks_and_too_large_a_rank():
    X, Y = planted_interaction(m=30, noise=0.5)
    with pytest.raises(ValueError, match="30 masks cannot determine .* more masks than components"):
        ProjectedQuadratic(rank=2).fit(X, Y)
    X, Y = planted_interaction(noise=0.5)
    with pytest.raises(ValueError, match=r"rank 13 exceeds min\(components, examples\) = min\(40, 12\)"):
        ProjectedQuadratic(rank=13).fit(X, Y)
    # The same sizes are checked before any mask is collected (coar.attribute, the workflow's checks).
    ProjectedQuadratic(rank=2).check_sizes(40, 12, masks=42)
    with pytest.raises(ValueError, match="41 masks cannot determine .* at least 42"):
        ProjectedQuadratic(rank=2).check_sizes(40, 12, masks=41)
    with pytest.raises(ValueError, match=r"rank 13 exceeds"):
        ProjectedQuadratic(rank=13).check_sizes(40, 12)


@pytest.mark.parametrize("rank, penalty", [(0, 1.0), (2.5, 1.0), (True, 1.0), (2, -1.0), (2, float("nan"))])
def test_refuses_bad_settings(rank, penalty):
    with pytest.raises(ValueError, match="rank must be|penalty must be"):
        ProjectedQuadratic(rank=rank, penalty=penalty)


def test_predict_refuses_before_fit_and_on_wrong_width():
    with pytest.raises(RuntimeError, match="not fitted yet"):
        ProjectedQuadratic().predict(np.zeros((3, 4)))
    X, Y = planted_interaction(noise=0.5)
    s = ProjectedQuadratic(rank=2).fit(X, Y)
    with pytest.raises(ValueError, match="masks have 39 columns but the surrogate was fit on 40 components"):
        s.predict(X[:, :39])


# -- streamed: the workflow's fit reads the run's rows in chunks ----------------------------------


def chunked(X, Y, rows):
    return [(X[i:i + rows], Y[i:i + rows]) for i in range(0, len(X), rows)]


@pytest.mark.parametrize("rows", [1, 7, 1500])
def test_streamed_fit_gives_the_in_memory_coefficients_whatever_the_chunk_size(rows):
    X, Y = planted_interaction(noise=0.5)
    Y = Y + 50.0  # outputs far from 0: the raw sums must not lose the spread to cancellation
    whole = ProjectedQuadratic(rank=4, penalty=3.0).fit(X, Y)
    ols = fit((X, Y), "ols", backend="numpy").weight  # the run's attributions.h5
    streamed = ProjectedQuadratic(rank=4, penalty=3.0).fit_chunks(chunked(X, Y, rows), ols)
    for name in ("basis_", "weight_", "quad_", "bias_"):
        np.testing.assert_allclose(getattr(streamed, name), getattr(whole, name), rtol=1e-8,
                                   atol=1e-8 * np.abs(getattr(whole, name)).max(), err_msg=name)
    assert streamed.n_masks_ == whole.n_masks_ == len(X)
    np.testing.assert_allclose(streamed.predict(heldout()), whole.predict(heldout()), rtol=1e-8)


def test_streamed_fit_reads_a_function_of_fresh_chunks_twice():
    X, Y = planted_interaction(noise=0.5)
    ols = fit((X, Y), "ols", backend="numpy").weight
    passes = []

    def chunks():
        passes.append(1)
        return iter(chunked(X, Y, 100))

    s = ProjectedQuadratic(rank=3).fit_chunks(chunks, ols)
    assert len(passes) == 2
    np.testing.assert_allclose(s.predict(X[:5]), ProjectedQuadratic(rank=3).fit(X, Y).predict(X[:5]), rtol=1e-8)


def test_streamed_fit_refuses_a_spent_iterator_wrong_weights_and_changing_rows():
    X, Y = planted_interaction(noise=0.5)
    ols = fit((X, Y), "ols", backend="numpy").weight
    with pytest.raises(ValueError, match="chunks must be re-iterable"):
        ProjectedQuadratic(rank=2).fit_chunks(iter(chunked(X, Y, 100)), ols)
    with pytest.raises(ValueError, match=r"ols_weight must be \(examples x components\) = \(12, 40\)"):
        ProjectedQuadratic(rank=2).fit_chunks(chunked(X, Y, 100), ols.T)
    reads = iter([chunked(X, Y, 100), chunked(X, Y, 100)[:-1]])
    with pytest.raises(ValueError, match="1500 rows on the first pass but 1400 on the second"):
        ProjectedQuadratic(rank=2).fit_chunks(lambda: next(reads), ols)


def test_a_surrogate_rebuilt_from_its_arrays_predicts_the_same():
    X, Y = planted_interaction(noise=0.5)
    s = ProjectedQuadratic(rank=3).fit(X, Y)
    copy = ProjectedQuadratic.from_fitted(s.basis_, s.weight_, s.quad_, s.bias_, rank=3, penalty=s.penalty,
                                          n_masks=s.n_masks_)
    np.testing.assert_array_equal(copy.predict(heldout()), s.predict(heldout()))
    with pytest.raises(ValueError, match="rank-2 surrogate of 40 components and 12 examples needs arrays"):
        ProjectedQuadratic.from_fitted(s.basis_, s.weight_, s.quad_, s.bias_, rank=2, penalty=1.0, n_masks=1)
