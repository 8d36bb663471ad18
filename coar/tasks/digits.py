"""The default task: a small residual CNN on scikit-learn's handwritten digits.

The 1,797 8x8 digit images ship with scikit-learn, so the task needs no download. A stratified,
seeded split holds out ``test_fraction`` of them; the held-out examples are the ones the
workflow attributes. A second stratified split takes ``validation_fraction`` of all images out of
the training pool: the model never trains on them and they are not attributed; editing chooses
its number of ablated components on them (Task ``validation_inputs``). The task function trains the model itself in seconds, on one CPU thread,
deterministically given ``seed`` whatever torch's thread count (bit for bit on one machine;
another CPU may round differently, so weights may then differ in the last bits). The network is deliberately cheap per
example: COAR runs it millions of times under ablation.
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coar.task import Task, restoring
from coar.tasks.params import with_defaults
from coar.training import optimise, single_threaded

DEFAULT_PARAMS = {
    "seed": 0,  # model initialisation, shuffling and augmentation
    "split_seed": 0,  # the train/test split, kept apart so every model seed attributes the same examples
    "test_fraction": 0.2,
    "validation_fraction": 0.1,  # of all images, taken from the training pool (0: no validation examples)
    "epochs": 30,
    "width": 1.0,  # channel multiplier; small values give a fast model for tests
    "n_reference": 256,  # training images kept as reference_inputs (for mean ablation)
}
BATCH_SIZE = 64
LEARNING_RATE = 0.05
WEIGHT_DECAY = 5e-4
PIXEL_MAX = 16.0  # load_digits pixel intensities are integers 0..16


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (a 1x1 conv-BN when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class DigitsResNet(nn.Module):
    """Residual CNN for (B, 1, 8, 8) inputs: a 32-channel stem at 8x8, then two 64-channel blocks at 4x4.

    At width 1 its Conv2d layers have 352 output channels (filters) in total. Downsampling right
    after the stem keeps the forward pass cheap: most of the compute runs at 4x4.
    """

    def __init__(self, width: float = 1.0, num_classes: int = 10) -> None:
        super().__init__()
        stem, c1, c2 = (max(1, round(c * width)) for c in (32, 64, 64))
        self.stem = nn.Sequential(nn.Conv2d(1, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU())
        self.blocks = nn.Sequential(ResidualBlock(stem, c1, stride=2), ResidualBlock(c1, c2))
        self.head = nn.Linear(c2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(x))
        return self.head(features.mean(dim=(2, 3)))


def count_conv_filters(model: nn.Module) -> int:
    """Total output channels over the model's Conv2d layers (COAR's components for a CNN)."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


@dataclass
class DigitsSplit:
    """Normalised (n, 1, 8, 8) float32 images and int64 labels; ``test_ids`` index load_digits."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    test_ids: np.ndarray
    validation_x: torch.Tensor
    validation_y: torch.Tensor
    background: float  # a blank pixel after normalisation, the padding value for shifts


def load_digits_split(test_fraction: float, split_seed: int, validation_fraction: float = 0.0) -> DigitsSplit:
    """Stratified seeded splits, standardised with the mean and std of the pixels outside the test split.

    The test images depend on ``test_fraction`` and ``split_seed`` alone; the validation images
    (``validation_fraction`` of all, 0 for none) are then taken out of the training pool.
    """
    # (imported here, not at the top: the workflow imports the task's module at every start-up)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / PIXEL_MAX
    train_ids, test_ids = train_test_split(
        np.arange(len(images)), test_size=test_fraction, stratify=digits.target, random_state=split_seed
    )
    mean, std = images[train_ids].mean(), images[train_ids].std()  # before the validation split: test inputs keep their values
    validation_ids = np.arange(0)
    if validation_fraction > 0:
        train_ids, validation_ids = train_test_split(
            train_ids, test_size=round(validation_fraction * len(images)), stratify=digits.target[train_ids],
            random_state=split_seed,
        )

    def tensors(ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy((images[ids] - mean) / std).unsqueeze(1)
        return x, torch.from_numpy(digits.target[ids]).long()

    (train_x, train_y), (test_x, test_y) = tensors(train_ids), tensors(test_ids)
    validation_x, validation_y = tensors(validation_ids)
    return DigitsSplit(train_x, train_y, test_x, test_y, test_ids, validation_x, validation_y, float(-mean / std))


def random_shift(images: torch.Tensor, background: float, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by -1, 0 or +1 pixels in each direction, filling with ``background``."""
    n, _, height, width = images.shape
    padded = F.pad(images[:, 0], (1, 1, 1, 1), value=background)
    dy, dx = torch.randint(0, 3, (2, n, 1), generator=generator)
    rows = (dy + torch.arange(height))[:, :, None]
    cols = (dx + torch.arange(width))[:, None, :]
    return padded[torch.arange(n)[:, None, None], rows, cols].unsqueeze(1)


def train(model: nn.Module, split: DigitsSplit, epochs: int, seed: int) -> None:
    """SGD with Nesterov momentum, cosine learning rate, and random 1-pixel shifts."""
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(split.train_x) // BATCH_SIZE)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=LEARNING_RATE, momentum=0.9, nesterov=True, weight_decay=WEIGHT_DECAY
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, total_steps=epochs * steps_per_epoch, pct_start=0.2
    )

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(epochs):
            order = torch.randperm(len(split.train_x), generator=generator)
            for batch in order.split(BATCH_SIZE):
                yield random_shift(split.train_x[batch], split.background, generator), split.train_y[batch]

    optimise(model, optimizer, schedule, batches(), F.cross_entropy)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` the model classifies correctly (eval mode)."""
    model.eval()
    return (model(x).argmax(dim=1) == y).float().mean().item()


def task(params: dict) -> Task:
    """Train a DigitsResNet and return the task attributing its test-set margins.

    While coar restores a prepared run (coar.task.restoring()), the model is returned untrained.

    Params (all optional): seed, split_seed, test_fraction, validation_fraction, epochs, width, n_reference.
    """
    p = with_defaults(params, DEFAULT_PARAMS, "digits task")
    split = load_digits_split(float(p["test_fraction"]), int(p["split_seed"]), float(p["validation_fraction"]))
    with torch.random.fork_rng(devices=[]):  # seed the initialisation without touching global RNG state
        torch.manual_seed(int(p["seed"]))
        model = DigitsResNet(width=float(p["width"]))
    start = time.perf_counter()
    if not restoring():  # a later step loads the prepared weights: no need to train again
        with single_threaded():
            train(model, split, int(p["epochs"]), int(p["seed"]))
    train_seconds = time.perf_counter() - start

    reference = torch.randperm(len(split.train_x), generator=torch.Generator().manual_seed(int(p["seed"])))
    return Task(
        model=model,
        inputs=split.test_x,
        labels=split.test_y,
        output_fn="margin",
        example_ids=[str(i) for i in split.test_ids],
        reference_inputs=split.train_x[reference[: int(p["n_reference"])]],
        validation_inputs=split.validation_x if len(split.validation_x) else None,
        validation_labels=split.validation_y if len(split.validation_y) else None,
        info={
            "dataset": "sklearn load_digits",
            "params": p,
            "n_train": len(split.train_x),
            "n_test": len(split.test_x),
            "n_validation": len(split.validation_x),
            "train_accuracy": accuracy(model, split.train_x, split.train_y),
            "test_accuracy": accuracy(model, split.test_x, split.test_y),
            "train_seconds": train_seconds,
            "conv_filters": count_conv_filters(model),
        },
    )
