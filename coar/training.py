"""What the tasks that train their own model share: one CPU thread, and the optimisation loop."""

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
    """One optimizer and schedule step per (inputs, targets) batch, in train mode; returns the last loss.

    The model is left in eval mode. `batches` is consumed lazily, so a generator that draws
    its batches from a seeded generator reproduces the same run.
    """
    model.train()
    loss = torch.tensor(float("nan"))
    for inputs, targets in batches:
        loss = loss_fn(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return float(loss.detach())
