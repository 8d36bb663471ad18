"""Seeded, sharded ablation masks.

A mask row holds one boolean per component, True = ablated; each component is ablated
independently with probability alpha. Shard i of a run is drawn from its own random stream,
seeded by (seed, purpose, i) alone, so any machine can make any shard without the others and
get the same bits. Each purpose ("train", "heldout") has its own streams, so evaluation masks
are independent draws from the same distribution as training masks. A held-out row may equal a
training row (likely only for small N, e.g. the empty mask); such rows are kept, since dropping
them would bias the held-out set, and `count_rows_in` counts them for the report.
"""

from __future__ import annotations

import hashlib
from numbers import Integral

import numpy as np

# Stream ids are part of the seed: never renumber an entry, only add new ones.
PURPOSE_ID: dict[str, int] = {"train": 0, "heldout": 1}

# Uniforms drawn per step: bounds the float64 scratch memory to 32 MiB whatever rows x N is.
_BLOCK_ELEMENTS = 1 << 22


def shard_ranges(m: int, n_shards: int | None = None, *, shard_masks: int | None = None) -> list[tuple[int, int]]:
    """Split mask rows 0..m into contiguous [start, stop) ranges: `n_shards` ranges with sizes
    within 1, or ranges of `shard_masks` rows each (the last holds the rest).

    With `shard_masks`, shard i's range does not depend on m unless it is the last one, so a
    run grown to more masks keeps its finished shards (their masks depend on (seed, i) alone).
    """
    if (n_shards is None) == (shard_masks is None):
        raise ValueError("give exactly one of n_shards and shard_masks")
    if shard_masks is not None:
        _require_int("shard_masks", shard_masks, minimum=1)
        _require_int("m", m, minimum=1)
        return [(start, min(start + shard_masks, m)) for start in range(0, m, shard_masks)]
    if not 1 <= n_shards <= m:
        raise ValueError(
            f"n_shards must be between 1 and m={m} so that every shard holds at least one "
            f"mask row, got n_shards={n_shards}"
        )
    base, extra = divmod(m, n_shards)
    ranges, start = [], 0
    for i in range(n_shards):
        stop = start + base + (i < extra)
        ranges.append((start, stop))
        start = stop
    return ranges


def sample_masks(
    seed: int, shard: int, rows: int, n_components: int, alpha: float, purpose: str = "train"
) -> np.ndarray:
    """Draw shard `shard`'s (rows x n_components) bool masks, True = ablated w.p. alpha.

    The result depends only on (seed, purpose, shard, rows, n_components, alpha); the first k
    rows are the same whatever `rows` is.
    """
    _require_int("seed", seed, minimum=0)
    _require_int("shard", shard, minimum=0)
    _require_int("rows", rows, minimum=0)
    _require_int("n_components", n_components, minimum=1)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha is the probability of ablating a component and must lie in (0, 1), got {alpha}")
    if purpose not in PURPOSE_ID:
        raise ValueError(f"unknown mask purpose {purpose!r}; known purposes: {sorted(PURPOSE_ID)}")
    seeds = np.random.SeedSequence([int(seed), PURPOSE_ID[purpose], int(shard)])
    rng = np.random.Generator(np.random.PCG64(seeds))
    masks = np.empty((rows, n_components), dtype=bool)
    block = max(1, _BLOCK_ELEMENTS // n_components)
    for start in range(0, rows, block):
        stop = min(start + block, rows)
        np.less(rng.random((stop - start, n_components)), alpha, out=masks[start:stop])
    return masks


def count_rows_in(masks: np.ndarray, reference) -> int:
    """How many rows of `masks` equal some row of `reference` (each such row counted once).

    `reference` may be any 2-D row-sliceable array (an h5py dataset too): it is read in blocks
    and kept only as 16-byte digests of its bit-packed rows. A digest match is confirmed by
    comparing the rows themselves, so the count is exact, not probabilistic.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 2 or len(reference.shape) != 2 or masks.shape[1] != reference.shape[1]:
        raise ValueError(
            f"masks {masks.shape} and reference {tuple(reference.shape)} must both be 2-D "
            "with the same number of components (columns)"
        )
    digests: dict[bytes, list[int]] = {}
    block = max(1, _BLOCK_ELEMENTS // max(1, masks.shape[1]))
    for start in range(0, reference.shape[0], block):
        rows = np.asarray(reference[start : start + block], dtype=bool)
        for offset, digest in enumerate(_row_digests(rows)):
            digests.setdefault(digest, []).append(start + offset)
    return sum(
        any(np.array_equal(masks[i], reference[j]) for j in digests.get(digest, ()))
        for i, digest in enumerate(_row_digests(masks))
    )


def _row_digests(rows: np.ndarray) -> list[bytes]:
    """16-byte BLAKE2b digest of each bit-packed row."""
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in np.packbits(rows, axis=1)]


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def is_auto(config: dict) -> bool:
    """True when the config grows its masks in rounds (`masks: auto`, coar.rounds)."""
    return config["masks"] == "auto"


def round_masks(config: dict) -> int:
    """Masks per round of a `masks: auto` run: masks_auto.round_masks, or one shard's."""
    return config["masks_auto"]["round_masks"] or config["shard_masks"]


def mask_budget(config: dict) -> int:
    """The most training masks the config can collect: `masks`, or for `masks: auto` its
    max_masks rounded up to whole rounds."""
    if not is_auto(config):
        return config["masks"]
    return whole_rounds(config["masks_auto"]["max_masks"], round_masks(config))


def whole_rounds(max_masks: int, round_size: int) -> int:
    """`max_masks` rounded up to whole rounds of `round_size` masks: a run in rounds' budget."""
    return -(-max_masks // round_size) * round_size


def shard_rows(config: dict) -> list[tuple[int, int]]:
    """Each collection job's [start, stop) mask rows: `shards` equal shards when set, else shards
    of `shard_masks` rows (coar.masks.shard_ranges), up to the mask budget."""
    if config["shards"] is not None:
        return shard_ranges(mask_budget(config), config["shards"])
    return shard_ranges(mask_budget(config), shard_masks=config["shard_masks"])


def collection_jobs(config: dict) -> int:
    """How many collection jobs `config` makes at most (as len(shard_rows(config)), without listing them)."""
    if config["shards"] is not None:
        return config["shards"]
    return -(-mask_budget(config) // config["shard_masks"])


def largest_shard(config: dict) -> int:
    """The most rows any collection job of `config` holds (as `shard_rows`, without listing them)."""
    if config["shards"] is not None:
        return -(-mask_budget(config) // config["shards"])
    return min(config["shard_masks"], mask_budget(config))
