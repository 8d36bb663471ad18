"""Example sources: batches in order, the streamed examples fingerprint, the first-pass check, the cache."""

import pytest
import torch

from coar.examples import DatasetExamples, FingerprintChecked, TensorExamples, stack
from coar.fingerprint import ExamplesHasher


class Pairs(torch.utils.data.Dataset):
    """(input, label) pairs of two tensors; counts how often items are read."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        self.inputs, self.labels, self.reads = inputs, labels, 0

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        return self.inputs[i], int(self.labels[i])


def fingerprint(examples, batch_size: int) -> str:
    hasher = ExamplesHasher()
    for x, y in examples.batches(batch_size):
        hasher.update(x, y)
    return hasher.hexdigest()


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(10, 3, 2, generator=generator), torch.randint(0, 4, (10,), generator=generator)


def test_the_fingerprint_ignores_batch_size_and_source_but_not_values_or_order(data):
    inputs, labels = data
    reference = fingerprint(TensorExamples(inputs, labels), 10)
    assert fingerprint(TensorExamples(inputs, labels), 3) == reference
    assert fingerprint(DatasetExamples(Pairs(inputs, labels)), 4) == reference
    changed = inputs.clone()
    changed[7, 1, 0] += 1e-3
    assert fingerprint(TensorExamples(changed, labels), 3) != reference
    assert fingerprint(TensorExamples(inputs.flip(0), labels.flip(0)), 3) != reference
    assert fingerprint(TensorExamples(inputs[:9], labels[:9]), 3) != reference
    assert fingerprint(TensorExamples(inputs.double(), labels), 3) != reference


def test_the_fingerprint_refuses_examples_of_differing_shapes():
    hasher = ExamplesHasher()
    hasher.update(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="same dtype and shape"):
        hasher.update(torch.zeros(2, 4), torch.zeros(2))


def test_a_wrong_first_pass_is_refused_after_its_last_batch_and_a_right_one_only_once(data):
    inputs, labels = data
    right = fingerprint(TensorExamples(inputs, labels), 10)
    checked = FingerprintChecked(TensorExamples(inputs, labels), "0" * 64, "run")
    batches = checked.batches(4)
    assert len([next(batches) for _ in range(3)]) == 3  # all 10 examples, then the refusal
    with pytest.raises(RuntimeError, match=f"examples fingerprint {right} but prepare.json records 0000"):
        next(batches)
    checked = FingerprintChecked(TensorExamples(inputs, labels), right, "run")
    assert torch.equal(stack(checked, 4)[0], inputs) and checked.checked


def test_a_dataset_is_reread_every_pass_unless_it_fits_the_cache(data):
    inputs, labels = data
    streamed = Pairs(inputs, labels)
    source = DatasetExamples(streamed)
    for _ in range(3):
        assert torch.equal(stack(source, 4)[0], inputs)
    assert streamed.reads == 30

    cached = Pairs(inputs, labels)
    source = DatasetExamples(cached, cache_bytes=inputs.nbytes + labels.nbytes)
    for _ in range(3):
        x, y = stack(source, 4)
        assert torch.equal(x, inputs) and torch.equal(y, labels)
    assert cached.reads == 10

    too_small = Pairs(inputs, labels)
    source = DatasetExamples(too_small, cache_bytes=inputs.nbytes)
    for _ in range(2):
        stack(source, 4)
    assert too_small.reads == 20


def test_dataloader_workers_give_the_same_batches(data):
    inputs, labels = data
    x, y = stack(DatasetExamples(Pairs(inputs, labels), workers=2), 3)
    assert torch.equal(x, inputs) and torch.equal(y, labels)
