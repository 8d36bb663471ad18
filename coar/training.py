"""What the tasks that train their own model share: one CPU thread, and the optimisation loop in float64.

The CPUs of one kind of machine differ (AVX2 only, AVX-512, AMX), and torch, oneDNN and MKL pick
different kernels on each: in float32 the different rounding of those kernels grows over training
into different weights (the default model trained to visibly different attributions and edits on
an AVX2 and an AVX-512 machine). Training in float64 keeps those differences around 1e-16, far
below what the float32 weights the model ends with can hold, so every machine gets the same
model (tests/test_training.py trains under both kernel settings and compares).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch on one CPU thread, then restore the previous count.

    Training these small models gains little from threads, a single thread makes the weights
    independent of the machine's core count, and it avoids the many-fold slowdown of OpenMP
    threads competing with other jobs for the same cores.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def optimise(model: nn.Module, optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler,
             batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
    """One optimizer and schedule step per (inputs, targets) batch, in train mode and float64;
    returns the last loss.

    The model trains in float64 (module doc) and is left in float32 and eval mode; floating-point
    inputs are cast to float64, integer ones (labels, token ids) kept. `batches` is consumed
    lazily, so a generator that draws its batches from a seeded generator reproduces the same run.
    """
    model.double().train()  # in place: the optimizer's parameters are the same tensors
    loss = torch.tensor(float("nan"))
    for inputs, targets in batches:
        loss = loss_fn(model(_float64(inputs)), _float64(targets))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.float().eval()
    return float(loss.detach())


def _float64(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.double() if tensor.is_floating_point() else tensor
