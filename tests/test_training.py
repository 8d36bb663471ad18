"""The models coar trains itself (the default task, the demos, tinylm) get the same weights on every
CPU of a kind: trained in float64 (coar.training.optimise), whatever kernels torch, oneDNN and MKL
pick for the machine's instructions (AVX2 only, AVX-512, AMX)."""

import hashlib
import os
import subprocess
import sys

import pytest
import torch

from coar.tasks import digits

TRAIN = """
import hashlib, sys
import coar.tasks.digits as digits
model = digits.task({"width": 0.25, "epochs": 2}).model
print(hashlib.sha256(b"".join(t.numpy().tobytes() for t in model.state_dict().values())).hexdigest())
"""
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
"""The kernel choice of a machine with AVX2 only, simulated on any newer one (torch's, oneDNN's and MKL's)."""


def trained_weights_digest(settings: dict) -> str:
    environment = {k: v for k, v in os.environ.items() if k not in AVX2}
    result = subprocess.run([sys.executable, "-c", TRAIN], env={**environment, **settings}, capture_output=True,
                            text=True, check=True)
    return result.stdout.strip()


@pytest.mark.slow
def test_the_default_model_trains_to_the_same_weights_under_avx2_and_the_machines_own_kernels():
    # In float32 this model's weights differ between the two settings on an AVX-512 machine.
    assert trained_weights_digest({}) == trained_weights_digest(AVX2)


def test_training_leaves_a_float32_model_in_eval_mode():
    model = digits.task({"width": 0.25, "epochs": 1}).model
    assert {p.dtype for p in model.state_dict().values() if p.is_floating_point()} == {torch.float32}
    assert not model.training
