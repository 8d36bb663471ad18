"""Backends: numpy always, cupy only when installed with a GPU, and never imported otherwise."""

import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from coar.solver import fit, get_backend


def cupy_usable():
    if importlib.util.find_spec("cupy") is None:
        return False
    import cupy

    return cupy.cuda.is_available()


@pytest.fixture
def no_cupy(monkeypatch):
    """Pretend cupy is not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cupy" else real(name, *a))


@pytest.fixture
def cupy_without_gpu(monkeypatch):
    """Pretend cupy is installed but sees no CUDA device."""
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(is_available=lambda: False)
    real = importlib.util.find_spec
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "cupy" else real(name, *a))


def test_numpy_backend_is_numpy():
    assert get_backend("numpy").xp is np


def test_auto_falls_back_to_numpy_without_cupy(no_cupy):
    assert get_backend("auto").name == "numpy"


def test_auto_falls_back_to_numpy_when_cupy_sees_no_gpu(cupy_without_gpu):
    assert get_backend("auto").name == "numpy"


def test_asking_for_cupy_without_it_says_it_is_not_installed(no_cupy):
    with pytest.raises(RuntimeError, match="cupy is not installed"):
        get_backend("cupy")


def test_asking_for_cupy_without_a_gpu_says_there_is_no_device(cupy_without_gpu):
    with pytest.raises(RuntimeError, match="no CUDA device"):
        get_backend("cupy")


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be"):
        get_backend("jax")


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="cupy is installed here")
def test_fitting_without_cupy_installed_never_imports_it():
    code = (
        "import sys, numpy as np; from coar.solver import fit; "
        "X = np.random.default_rng(0).random((200, 10)) < 0.3; "
        "fit((X, X @ np.ones((10, 2), np.float32)), 'ridge'); "
        "assert 'cupy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.skipif(not cupy_usable(), reason="needs cupy with a CUDA device")
@pytest.mark.parametrize(
    "method, solver",
    [("ols", "closed_form"), ("ridge", "closed_form"), ("lasso", "closed_form"), ("ridge", "iterative")],
)
def test_cupy_gives_the_numpy_answer(method, solver):
    rng = np.random.default_rng(0)
    X = rng.random((1500, 60)) < 0.1
    Y = (X @ rng.standard_normal((60, 8)) + rng.standard_normal((1500, 8))).astype(np.float32)
    on_cpu = fit((X, Y), method, backend="numpy", solver=solver)
    on_gpu = fit((X, Y), method, backend="cupy", solver=solver)
    np.testing.assert_allclose(on_gpu.lam, on_cpu.lam, rtol=1e-6)
    scale = np.abs(on_cpu.weight).max()
    np.testing.assert_allclose(on_gpu.weight, on_cpu.weight, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(on_gpu.bias, on_cpu.bias, rtol=1e-5)
