"""Array backends for the solver: numpy on the CPU, cupy on a CUDA GPU, behind one interface.

Solver code is written once against `Backend.xp` (the numpy or cupy module) and the few linear
algebra calls below, so both backends give the same answers up to floating-point rounding.
cupy is imported lazily, only when asked for or when "auto" finds it installed with a visible
device, so CPU-only installs never import it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from coar.constants import SolverBackend as BackendName
from coar.solver.memory import MemoryLimit, job_memory


@dataclass(frozen=True)
class Backend:
    """An array module (`xp`) with its scipy-style linear algebra module (`linalg`)."""

    name: str
    xp: ModuleType
    linalg: ModuleType

    def to_numpy(self, a: Any) -> np.ndarray:
        """Copy an array of this backend to host memory (no copy for numpy)."""
        return a if self.xp is np else self.xp.asnumpy(a)

    def memory(self) -> MemoryLimit:
        """Memory of the device the arrays live on: this job's share of host memory (see
        coar.solver.memory), or the GPU's memory."""
        if self.xp is np:
            return job_memory()
        return MemoryLimit(int(self.xp.cuda.Device().mem_info[1]), "GPU memory")

    def cho_solve(self, a: Any, b: Any) -> Any:
        """Solve a x = b for symmetric positive definite a by Cholesky (never an inverse).

        Raises numpy.linalg.LinAlgError when a is not positive definite (numpy raises it itself;
        cupy instead leaves NaNs in the factor, which the diagonal check catches).
        """
        return self.cho_solve_factor(self.cholesky(a), b)

    def cholesky(self, a: Any, *, overwrite: bool = False) -> Any:
        """The lower Cholesky factor of symmetric positive definite a (LinAlgError otherwise).

        overwrite=True factors a in place on the CPU (a is then the factor's storage, and no
        second N x N matrix is allocated); cupy always returns a new array.
        """
        if overwrite and self.xp is np and a.flags.c_contiguous:
            low = blocked_cholesky_(a)
        else:
            low = self.xp.linalg.cholesky(a)
        diag = self.xp.diagonal(low)
        if not bool(self.xp.all(self.xp.isfinite(diag)) and self.xp.all(diag > 0)):
            raise np.linalg.LinAlgError("matrix is not positive definite")
        return low

    def cho_solve_factor(self, low: Any, b: Any) -> Any:
        """Solve (low low') x = b given the lower Cholesky factor `low`."""
        half = self.linalg.solve_triangular(low, b, lower=True)
        return self.linalg.solve_triangular(low, half, lower=True, trans="T")


CHOLESKY_BLOCK = 2048


def blocked_cholesky_(a: np.ndarray, block: int = CHOLESKY_BLOCK) -> np.ndarray:
    """Factor symmetric positive definite `a` in place: its lower triangle becomes the lower
    Cholesky factor, which is returned (the upper triangle above it is left as scratch).

    Right-looking, one block column at a time: a small dense factor of the diagonal block, a
    triangular solve for the panel below it, and general matrix products updating the lower
    triangle of the rest, block column by block column (at most N x `block` of scratch; never
    an N x N temporary). LAPACK's own in-place factor (dpotrf, via scipy) and numpy's symmetric
    product (X @ X.T) crashed with a segmentation fault at N = 22,720 in the OpenBLAS builds of
    the scipy and numpy wheels; these calls keep every kernel on blocks of at most `block`.
    """
    import scipy.linalg

    n = a.shape[0]
    for j in range(0, n, block):
        e = min(n, j + block)
        try:
            a[j:e, j:e] = np.linalg.cholesky(a[j:e, j:e])
        except np.linalg.LinAlgError:
            raise np.linalg.LinAlgError("matrix is not positive definite") from None
        if e < n:
            # the panel L21 solves L21 L11' = A21, i.e. L11 L21' = A21'
            panel = scipy.linalg.solve_triangular(a[j:e, j:e], a[e:, j:e].T, lower=True, check_finite=False).T
            a[e:, j:e] = panel
            for c in range(e, n, block):  # the lower triangle of the rest, one block column at a time
                a[c:, c : c + block] -= panel[c - e :] @ panel[c - e : c - e + block].T
    return a


def get_backend(name: BackendName | Backend = "auto") -> Backend:
    """The backend called `name`; "auto" is cupy when it is installed and sees a GPU, else numpy."""
    if isinstance(name, Backend):
        return name
    if name == "numpy":
        return _numpy_backend()
    if name not in ("auto", "cupy"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'cupy', got {name!r}")
    reason = _cupy_unusable()
    if reason is None:
        return _cupy_backend()
    if name == "cupy":
        raise RuntimeError(
            f"backend='cupy' was requested but {reason}; use backend='numpy' or 'auto'"
        )
    return _numpy_backend()


def _cupy_unusable() -> str | None:
    """Why cupy cannot be used here, or None when it can. Imports cupy only if it is installed."""
    if importlib.util.find_spec("cupy") is None:
        return "cupy is not installed (pip install 'coar[gpu]', i.e. cupy-cuda12x)"
    import cupy

    if not cupy.cuda.is_available():
        return "cupy is installed but sees no CUDA device"
    return None


def _numpy_backend() -> Backend:
    import scipy.linalg

    return Backend("numpy", np, scipy.linalg)


def _cupy_backend() -> Backend:
    import cupy
    import cupyx.scipy.linalg

    return Backend("cupy", cupy, cupyx.scipy.linalg)
