"""An image-folder task: a small CNN over an on-disk ImageFolder, examples streamed from disk.

A template for tasks whose examples do not fit in memory. The folder has one subfolder per
class (``root/<class>/<image>.png``), as ``torchvision.datasets.ImageFolder`` reads it; the
examples are all its images in ImageFolder's (sorted) order, ids their paths relative to
``root``. The model is a seeded, randomly initialised CNN (a real task would train it, and
skip training while ``coar.task.restoring()``). With ``as_tensors`` the same images are loaded
and stacked into tensors instead, the in-memory form of the same task.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from coar.task import Task

DEFAULT_PARAMS = {"root": None, "seed": 0, "width": 16, "as_tensors": False}


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as a (3, H, W) float32 tensor in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1).contiguous()


class SmallCNN(nn.Module):
    """Three stride-2 3x3 conv-BN-ReLU layers, global average pooling and a linear head."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        layers, channels = [], 3
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def task(params: dict) -> Task:
    """The margins of a SmallCNN on every image of ``params["root"]`` (see DEFAULT_PARAMS)."""
    from torchvision.datasets import ImageFolder

    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValueError(f"unknown image_folder task params {sorted(unknown)}; valid: {sorted(DEFAULT_PARAMS)}")
    p = {**DEFAULT_PARAMS, **params}
    if not p["root"]:
        raise ValueError("the image_folder task needs params.root, a folder with one subfolder per class")
    root = Path(p["root"])
    dataset = ImageFolder(str(root), transform=to_tensor)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(p["seed"]))
        model = SmallCNN(len(dataset.classes), int(p["width"]))
    ids = [str(Path(path).relative_to(root)) for path, _ in dataset.samples]
    info = {"root": str(root), "classes": dataset.classes, "params": p}
    if p["as_tensors"]:
        inputs = torch.stack([dataset[i][0] for i in range(len(dataset))])
        labels = torch.tensor(dataset.targets)
        return Task(model=model, inputs=inputs, labels=labels, example_ids=ids, info=info)
    return Task(model=model, examples=dataset, example_ids=ids, info=info)
