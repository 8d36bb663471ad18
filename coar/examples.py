"""Sources of example batches: in-memory tensors, or a Dataset streamed from disk.

The ablated forward passes (coar.forward.run_masked) read the examples once per block of masks.
A source yields (inputs, labels) batches of a requested size, in example order, each time it is
iterated, so a Dataset is re-read block after block and a job's memory does not grow with n
(unless the examples fit the optional in-memory cache). `FingerprintChecked` hashes the first
full pass and refuses the data if they are not the examples that `prepare` recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from coar.fingerprint import ExamplesHasher

Batch = tuple[torch.Tensor, torch.Tensor]


class Examples(Protocol):
    """n examples that can be read, in order, as batches of a given size, any number of times."""

    def __len__(self) -> int: ...

    def batches(self, batch_size: int) -> Iterator[Batch]: ...


class TensorExamples:
    """Examples held as two tensors with a leading example dimension."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        if len(inputs) != len(labels):
            raise ValueError(f"inputs hold {len(inputs)} examples but labels {len(labels)}")
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.inputs)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for z0 in range(0, len(self.inputs), batch_size):
            yield self.inputs[z0 : z0 + batch_size], self.labels[z0 : z0 + batch_size]


class DatasetExamples:
    """A map-style Dataset of (input, label) read through a DataLoader in index order.

    `workers` and `pin_memory` go to the DataLoader. With `cache_bytes` > 0 the batches of the
    first pass are kept when all of them fit in that many bytes, and later passes (at the same
    batch size) read them from memory instead of the dataset; otherwise every pass re-reads it.
    """

    def __init__(self, dataset: Dataset, *, workers: int = 0, pin_memory: bool = False, cache_bytes: int = 0) -> None:
        if workers < 0 or cache_bytes < 0:
            raise ValueError("workers and cache_bytes must be >= 0")
        self.dataset, self.workers, self.pin_memory, self.cache_bytes = dataset, workers, pin_memory, cache_bytes
        self._cache: tuple[int, list[Batch]] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        if self._cache is not None and self._cache[0] == batch_size:
            yield from self._cache[1]
            return
        loader = DataLoader(self.dataset, batch_size=batch_size, shuffle=False, num_workers=self.workers,
                            pin_memory=self.pin_memory)
        kept: list[Batch] | None = [] if self.cache_bytes else None
        size = 0
        for x, y in _read(loader, len(self.dataset)):
            y = torch.as_tensor(y)
            if kept is not None:
                size += x.nbytes + y.nbytes
                if size <= self.cache_bytes:
                    kept.append((x, y))
                else:
                    kept = None
            yield x, y
        if kept is not None:
            self._cache = (batch_size, kept)


def _read(loader: DataLoader, n: int) -> Iterator[Batch]:
    """The loader's batches; a Dataset that cannot give an index below its length is refused, naming both."""
    try:
        yield from loader
    except (IndexError, KeyError) as error:
        raise ValueError(f"the task's Dataset says it has {n} examples (__len__) but reading them failed with "
                         f"{type(error).__name__}: {error}; make __len__ the number of items __getitem__ can read") from None


class FingerprintChecked:
    """`examples`, refused at the end of their first full pass unless they hash to `expected`.

    The hash is accumulated batch by batch (coar.fingerprint.ExamplesHasher), so checking never
    holds more than one batch. Nothing is yielded after the last batch of a wrong first pass:
    the error is raised there, before a caller writes any result.
    """

    def __init__(self, examples: Examples, expected: str, where: str) -> None:
        self.examples, self.expected, self.where = examples, expected, where
        self.checked = False

    def __len__(self) -> int:
        return len(self.examples)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        if self.checked:
            yield from self.examples.batches(batch_size)
            return
        hasher = ExamplesHasher()
        for x, y in self.examples.batches(batch_size):
            hasher.update(x, y)
            yield x, y
        found = hasher.hexdigest()
        if found != self.expected:
            raise RuntimeError(f"{self.where}: the examples changed after prepare: examples fingerprint {found} "
                               f"but prepare.json records {self.expected}; rerun the prepare step")
        self.checked = True


def first_inputs(examples: Examples, rows: int) -> torch.Tensor:
    """The inputs of the first `rows` examples (probes and dry passes need only a couple); reads
    one batch, so a fingerprint check waiting for a full pass is not disturbed."""
    return next(iter(examples.batches(rows)))[0]


def stack(examples: Examples, batch_size: int = 256) -> Batch:
    """All examples as two tensors (for methods that need them in memory at once)."""
    xs, ys = zip(*examples.batches(batch_size))
    return torch.cat(xs), torch.cat(ys)
