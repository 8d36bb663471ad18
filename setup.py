"""Builds coar's compiled extension `coar._C` (the package's metadata is in pyproject.toml).

The C++ CPU kernel is always built. The CUDA kernel is added when a CUDA toolkit and a CUDA
build of torch are present (a visible GPU is not needed to build), or as forced by
COAR_CUDA=0/1. Build against the torch you run with:

    pip install --no-build-isolation -e .
"""

import os
import sys
from pathlib import Path

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - explains the one set-up mistake everybody makes
    sys.exit(
        "coar's extension is compiled against the installed torch, but torch cannot be imported.\n"
        "Install torch first, then build without isolation so pip does not fetch another torch:\n"
        "    pip install torch && pip install --no-build-isolation -e ."
    )

CSRC = Path("csrc")


def build_cuda() -> bool:
    """CUDA kernel wanted: COAR_CUDA=0/1 decides, else a toolkit and a CUDA torch build."""
    forced = os.environ.get("COAR_CUDA")
    if forced is not None:
        return forced == "1"
    if CUDA_HOME is None or torch.version.cuda is None:
        return False
    if not (Path(CUDA_HOME) / "include" / "cuda_runtime.h").exists():
        print(f"coar: CUDA_HOME={CUDA_HOME} has no include/cuda_runtime.h; building the CPU kernel only "
              "(set CUDA_HOME to the toolkit, e.g. /usr/local/cuda)", file=sys.stderr)
        return False
    return True


def extension():
    sources = [str(CSRC / "apply_masks.cpp")]
    compile_args = {"cxx": ["-O3"]}
    if build_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        sources += [str(CSRC / "cuda" / "apply_masks.cu"), str(CSRC / "cuda" / "apply_masks_cuda.cpp")]
        compile_args["nvcc"] = ["-O3"]
        return CUDAExtension("coar._C", sources, extra_compile_args=compile_args)
    return CppExtension("coar._C", sources, extra_compile_args=compile_args)


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)
