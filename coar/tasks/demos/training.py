"""The demos' model: a DigitsResNet trained on [0, 1] images with the digits task's recipe."""

from __future__ import annotations

import numpy as np
import torch

from coar.task import restoring
from coar.tasks.demos.images import Standardiser
from coar.tasks.digits import DigitsResNet, DigitsSplit, train
from coar.training import single_threaded


def train_on_images(images: np.ndarray, labels: np.ndarray, *, width: float, epochs: int, seed: int,
                    num_classes: int = 10) -> tuple[DigitsResNet, Standardiser]:
    """A DigitsResNet trained on `images` standardised with their own statistics, on one thread, and
    that standardisation, which every later example goes through. While coar restores a prepared
    run (coar.task.restoring()) the model is returned untrained: the saved weights replace its own."""
    standardise = Standardiser.fit(images)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsResNet(width=width, num_classes=num_classes)
    if not restoring():
        x, y = standardise(images), torch.from_numpy(labels)
        split = DigitsSplit(x, y, x[:0], y[:0], np.zeros(0, dtype=np.int64), x[:0], y[:0], standardise.background)
        with single_threaded():
            train(model, split, epochs, seed)
    return model.eval(), standardise
