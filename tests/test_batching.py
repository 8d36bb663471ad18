"""`max_batch: auto` and the out-of-memory back-off of the ablated passes."""

import logging

import numpy as np
import pytest
import torch

from coar.batching import PassSize, probe_rows, resolve_max_batch
from coar.constants import DEFAULT_MAX_BATCH
from coar.components import discover
from coar.forward import run_masked
from coar.masks import sample_masks
from coar.outputs import margin

from tests.tasks_for_tests import TinyNet


def test_auto_on_cpu_keeps_the_cache_friendly_default_and_logs_it(caplog):
    model = TinyNet().eval()
    with caplog.at_level(logging.INFO, logger="coar.batching"):
        rows = resolve_max_batch("auto", model, torch.randn(3, 4), torch.device("cpu"))
    assert rows == DEFAULT_MAX_BATCH
    assert "max_batch auto: 512 rows per pass on cpu" in caplog.text


def test_an_integer_max_batch_is_kept_and_nonsense_refused():
    model = TinyNet().eval()
    assert resolve_max_batch(96, model, torch.randn(3, 4), torch.device("cpu")) == 96
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        resolve_max_batch("big", model, torch.randn(3, 4), torch.device("cpu"))


def test_probe_halves_until_the_trial_fits():
    tried = []

    def trial(rows):
        tried.append(rows)
        if rows > 100:
            raise torch.OutOfMemoryError("too big")

    assert probe_rows(trial, 1024) == 64
    assert tried == [1024, 512, 256, 128, 64]


def test_probe_passes_other_errors_through():
    def trial(rows):
        raise ValueError("a bug, not memory")

    with pytest.raises(ValueError, match="a bug"):
        probe_rows(trial, 8)


class OutOfMemoryAbove(torch.nn.Module):
    """Wraps a model and raises torch.OutOfMemoryError for batches of more than `limit` rows."""

    def __init__(self, model, limit):
        super().__init__()
        self.model, self.limit, self.refused = model, limit, 0

    def forward(self, x):
        if len(x) > self.limit:
            self.refused += 1
            raise torch.OutOfMemoryError(f"injected: {len(x)} rows > {self.limit}")
        return self.model(x)


def test_out_of_memory_during_collection_halves_the_pass_and_gives_the_same_outputs_to_float_rounding(caplog):
    torch.manual_seed(0)
    inner = TinyNet().eval()
    components = discover(inner, kinds=("linear",))
    wrapped = OutOfMemoryAbove(inner, limit=40).eval()
    masks = sample_masks(0, 0, 12, len(components), 0.2)
    x, y = torch.randn(25, 4), torch.randint(0, 3, (25,))
    expected = run_masked(inner, components, masks, x, y, margin, masks_per_pass=4, max_batch=4096)
    wrapped_components = discover(wrapped, kinds=("linear",))
    with caplog.at_level(logging.WARNING, logger="coar.batching"):
        got = run_masked(wrapped, wrapped_components, masks, x, y, margin, masks_per_pass=4, max_batch=4 * 25)
    assert wrapped.refused >= 1, "the injected error must have fired"
    # A smaller pass may take other kernels and summation orders: equal to float rounding, not bit for bit.
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert "out of memory with 25 examples per pass; continuing with 12" in caplog.text


def test_out_of_memory_with_one_example_per_pass_is_raised():
    size = PassSize(1)

    def run(z0, z1):
        raise torch.OutOfMemoryError("injected")

    with pytest.raises(torch.OutOfMemoryError):
        list(size.chunks(3, run))
