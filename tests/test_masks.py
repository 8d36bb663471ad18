"""Specification of coar.masks: seeded, sharded, reproducible ablation masks."""

import h5py
import numpy as np
import pytest

from coar import masks as masks_module
from coar.masks import count_rows_in, largest_shard, sample_masks, shard_ranges, shard_rows


@pytest.mark.parametrize(("m", "n_shards"), [(1, 1), (10, 3), (100, 7), (64, 64), (1000, 1)])
def test_shard_ranges_tile_rows_with_sizes_within_one(m, n_shards):
    ranges = shard_ranges(m, n_shards)
    assert len(ranges) == n_shards
    assert ranges[0][0] == 0 and ranges[-1][1] == m
    assert all(stop == next_start for (_, stop), (next_start, _) in zip(ranges, ranges[1:]))
    sizes = [stop - start for start, stop in ranges]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(("m", "n_shards"), [(10, 0), (10, 11), (0, 1)])
def test_shard_ranges_refuse_shard_counts_that_leave_a_shard_empty(m, n_shards):
    with pytest.raises(ValueError, match="n_shards"):
        shard_ranges(m, n_shards)


def test_a_shard_is_reproducible_from_seed_and_shard_alone():
    first = sample_masks(seed=7, shard=3, rows=50, n_components=200, alpha=0.1)
    np.random.seed(123)  # global numpy state must not matter
    sample_masks(seed=7, shard=2, rows=50, n_components=200, alpha=0.1)  # nor other shards drawn before
    again = sample_masks(seed=7, shard=3, rows=50, n_components=200, alpha=0.1)
    np.testing.assert_array_equal(first, again)


def test_the_seeding_scheme_is_pinned_so_existing_shards_stay_reproducible():
    masks = sample_masks(seed=0, shard=0, rows=4, n_components=16, alpha=0.25)
    assert np.packbits(masks, axis=1).tobytes().hex() == "30150c0080029536"


def test_first_rows_do_not_depend_on_how_many_rows_or_how_they_are_blocked(monkeypatch):
    many = sample_masks(seed=1, shard=0, rows=40, n_components=30, alpha=0.2)
    np.testing.assert_array_equal(sample_masks(1, 0, 9, 30, 0.2), many[:9])
    monkeypatch.setattr(masks_module, "_BLOCK_ELEMENTS", 70)  # 2 rows per block
    np.testing.assert_array_equal(sample_masks(1, 0, 40, 30, 0.2), many)


def test_masks_are_bool_with_requested_shape():
    masks = sample_masks(seed=0, shard=0, rows=5, n_components=11, alpha=0.5)
    assert masks.dtype == bool and masks.shape == (5, 11)
    assert sample_masks(seed=0, shard=0, rows=0, n_components=11, alpha=0.5).shape == (0, 11)


def test_different_shards_and_seeds_draw_different_masks():
    base = sample_masks(seed=0, shard=0, rows=20, n_components=100, alpha=0.3)
    assert not np.array_equal(base, sample_masks(seed=0, shard=1, rows=20, n_components=100, alpha=0.3))
    assert not np.array_equal(base, sample_masks(seed=1, shard=0, rows=20, n_components=100, alpha=0.3))


def test_heldout_masks_come_from_a_stream_independent_of_training_masks():
    train = sample_masks(seed=0, shard=0, rows=200, n_components=100, alpha=0.5, purpose="train")
    heldout = sample_masks(seed=0, shard=0, rows=200, n_components=100, alpha=0.5, purpose="heldout")
    # Independent fair coins agree on about half the entries; identical or mirrored streams on all/none.
    assert 0.45 < np.mean(train == heldout) < 0.55


@pytest.mark.parametrize("alpha", [0.025, 0.05, 0.5])
def test_each_component_is_ablated_with_probability_alpha(alpha):
    masks = sample_masks(seed=3, shard=0, rows=2000, n_components=500, alpha=alpha)
    sigma = np.sqrt(alpha * (1 - alpha) / masks.size)
    assert abs(masks.mean() - alpha) < 6 * sigma
    # every component has the same rate (no column left out or always ablated)
    column_sigma = np.sqrt(alpha * (1 - alpha) / masks.shape[0])
    assert np.all(np.abs(masks.mean(axis=0) - alpha) < 6 * column_sigma)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"rows": -1}, "rows"),
        ({"n_components": 0}, "n_components"),
        ({"seed": -1}, "seed"),
        ({"shard": 1.5}, "shard"),
        ({"purpose": "test"}, "purpose"),
    ],
)
def test_sample_masks_refuses_bad_arguments_by_name(kwargs, message):
    args = {"seed": 0, "shard": 0, "rows": 3, "n_components": 4, "alpha": 0.1} | kwargs
    with pytest.raises(ValueError, match=message):
        sample_masks(**args)


def _brute_force_count(masks, reference):
    seen = {tuple(row) for row in reference}
    return sum(tuple(row) in seen for row in masks)


def test_count_rows_in_counts_exactly_the_rows_found_in_the_reference():
    # N = 6 at alpha 0.5: only 64 distinct rows, so many coincide by chance.
    reference = sample_masks(seed=0, shard=0, rows=30, n_components=6, alpha=0.5)
    masks = sample_masks(seed=0, shard=0, rows=100, n_components=6, alpha=0.5, purpose="heldout")
    count = count_rows_in(masks, reference)
    assert count == _brute_force_count(masks, reference)
    assert 0 < count < len(masks)


def test_count_rows_in_is_zero_when_nothing_coincides():
    assert count_rows_in(np.eye(5, dtype=bool), np.zeros((3, 5), dtype=bool)) == 0


def test_count_rows_in_reads_the_reference_from_an_hdf5_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(masks_module, "_BLOCK_ELEMENTS", 16)  # several blocks of reference rows
    reference = sample_masks(seed=2, shard=0, rows=40, n_components=5, alpha=0.5)
    masks = sample_masks(seed=2, shard=1, rows=40, n_components=5, alpha=0.5)
    with h5py.File(tmp_path / "ref.h5", "w") as f:
        f["masks"] = reference
        count = count_rows_in(masks, f["masks"])
    assert count == _brute_force_count(masks, reference) > 0


def test_count_rows_in_refuses_a_reference_with_other_columns():
    with pytest.raises(ValueError, match="same number of components"):
        count_rows_in(np.zeros((2, 4), bool), np.zeros((2, 5), bool))


@pytest.mark.parametrize(("m", "shard_masks", "more"), [(1, 1, 0), (1000, 250, 200), (1100, 250, 100), (7, 3, 5), (400, 1000, 2000)])
def test_fixed_size_shards_keep_their_ranges_when_masks_grow(m, shard_masks, more):
    ranges, grown = shard_ranges(m, shard_masks=shard_masks), shard_ranges(m + more, shard_masks=shard_masks)
    assert ranges[0][0] == 0 and ranges[-1][1] == m and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(stop - start == shard_masks for start, stop in ranges[:-1])
    assert grown[: len(ranges) - 1] == ranges[:-1]  # every full shard is kept; the last may grow


def test_shard_ranges_take_a_count_or_a_size_not_both():
    with pytest.raises(ValueError, match="exactly one"):
        shard_ranges(10, 2, shard_masks=5)
    with pytest.raises(ValueError, match="exactly one"):
        shard_ranges(10)


@pytest.mark.parametrize("masks, shards, shard_masks", [(1000, 4, None), (1001, 4, None), (1000, None, 300),
                                                        (250, None, 300), (7, 7, None)])
def test_the_largest_shard_is_computed_without_listing_the_shards(masks, shards, shard_masks):
    config = {"masks": masks, "shards": shards, "shard_masks": shard_masks}
    assert largest_shard(config) == max(stop - start for start, stop in shard_rows(config))
