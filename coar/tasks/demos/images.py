"""Digit images for the editing tasks: a seeded three-way split, and a 12x12 canvas with room for marks.

The 8x8 sklearn digit sits in the canvas's top-left corner; the 4-pixel bands on the right and
at the bottom hold what a task draws: a rendered glyph of a digit (top right), a trigger patch
(bottom right), or a grey fill of the whole band (a background). Glyph and trigger keep a
pixel clear of the canvas edge, so the 1-pixel random shifts of training never clip them.
Pixels are in [0, 1] until a `Standardiser` turns them into model inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from coar.tasks.digits import PIXEL_MAX

CANVAS = 12
GLYPH_AT = (1, 8)  # top-left pixel (row, column) of the 5x3 glyph
TRIGGER_AT = (8, 8)  # top-left pixel of the 3x3 trigger

_FONT = {  # 3 columns x 5 rows per digit
    0: "111 101 101 101 111", 1: "010 110 010 010 111", 2: "111 001 111 100 111", 3: "111 001 111 001 111",
    4: "101 101 111 001 001", 5: "111 100 111 001 111", 6: "111 100 111 101 111", 7: "111 001 010 010 010",
    8: "111 101 111 101 111", 9: "111 101 111 001 111",
}
GLYPHS = np.array([[[c == "1" for c in row] for row in _FONT[d].split()] for d in range(10)], dtype=np.float32)
TRIGGER = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=np.float32)


@dataclass
class Part:
    """Images (n, H, W) float32 in [0, 1], int64 labels, and the load_digits index of each image."""

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray

    def take(self, rows: np.ndarray) -> "Part":
        return Part(self.images[rows], self.labels[rows], self.ids[rows])

    def sample(self, n: int, seed: int) -> "Part":
        """`n` of the images (all when n is larger), chosen by `seed`, in their original order."""
        if n >= len(self.labels):
            return self
        return self.take(np.sort(np.random.default_rng(seed).choice(len(self.labels), n, replace=False)))


@dataclass
class Parts:
    """Disjoint train, validation and test parts of the digits (by image)."""

    train: Part
    val: Part
    test: Part


def split_digits(seed: int, val_fraction: float = 0.15, test_fraction: float = 0.25) -> Parts:
    """Stratified, seeded split of the 1,797 digits into train (60%), validation and test images."""
    # (imported here, not at the top: the workflow imports the task's module at every start-up)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    ids = np.arange(len(digits.target))
    rest, test = train_test_split(ids, test_size=test_fraction, stratify=digits.target, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction),
                                  stratify=digits.target[rest], random_state=seed)
    images = digits.images.astype(np.float32) / PIXEL_MAX
    part = lambda rows: Part(images[rows], digits.target[rows].astype(np.int64), rows)  # noqa: E731
    parts = Parts(part(np.sort(train)), part(np.sort(val)), part(np.sort(test)))
    assert not (set(parts.test.ids) & (set(parts.train.ids) | set(parts.val.ids)))
    return parts


def on_canvas(images: np.ndarray) -> np.ndarray:
    """Each 8x8 image in the top-left corner of a blank 12x12 canvas."""
    out = np.zeros((len(images), CANVAS, CANVAS), dtype=np.float32)
    out[:, :8, :8] = images
    return out


def _stamp(canvas: np.ndarray, rows: np.ndarray, patch: np.ndarray, at: tuple[int, int]) -> np.ndarray:
    """Copy of `canvas` with `patch` (one per row, or one for all) drawn at `at` on the given rows."""
    out = canvas.copy()
    h, w = patch.shape[-2:]
    out[rows, at[0] : at[0] + h, at[1] : at[1] + w] = patch
    return out


def with_glyph(canvas: np.ndarray, digits: np.ndarray, rows: np.ndarray | None = None, ink: float = 1.0) -> np.ndarray:
    """Draw the glyph of digits[i] with intensity `ink` in the top-right corner of canvas row rows[i] (default all)."""
    rows = np.arange(len(canvas)) if rows is None else rows
    return _stamp(canvas, rows, ink * GLYPHS[np.asarray(digits, dtype=np.int64)], GLYPH_AT)


def with_trigger(canvas: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Draw the 3x3 checkerboard trigger in the bottom-right corner of the given rows (default all)."""
    rows = np.arange(len(canvas)) if rows is None else rows
    return _stamp(canvas, rows, TRIGGER, TRIGGER_AT)


def with_band(canvas: np.ndarray, rows: np.ndarray, intensity: float) -> np.ndarray:
    """Fill the free L-shaped band (right and bottom, outside the digit) of the given rows with grey."""
    out = canvas.copy()
    out[rows, 8:, :] = intensity
    out[rows, :, 8:] = intensity
    return out


@dataclass(frozen=True)
class Standardiser:
    """Pixel standardisation fitted on training images: (x - mean) / std, as (n, 1, H, W) float32."""

    mean: float
    std: float

    @classmethod
    def fit(cls, images: np.ndarray) -> "Standardiser":
        return cls(float(images.mean()), float(images.std()))

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((images - self.mean) / self.std).float().unsqueeze(1)

    @property
    def background(self) -> float:
        """A blank pixel after standardisation (the fill of random shifts)."""
        return -self.mean / self.std
