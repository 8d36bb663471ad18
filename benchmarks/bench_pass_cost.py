"""Per-example cost of one ablated forward pass of the published architectures, and HDF5 bytes per row.

The inputs to docs/scaling.md. For each model (random weights: the cost does not depend on
them), the seconds per example of the plain forward pass and of coar's batched ablated pass
(`run_masked`, k masks x n examples per pass, alpha 0.05) on this machine, median of `--reps`
timed repetitions after one warm-up; then the bytes one mask row takes in an HDF5 file with
coar's storage settings (bool, row chunks, gzip 4) at alpha 0.05 and 0.025.

    python benchmarks/bench_pass_cost.py                        # all four, 1 thread, ~3 min
    python benchmarks/bench_pass_cost.py --models resnet50 --device cuda --n 256 --k 8
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch
from torchvision.models import resnet18, resnet50, vit_b_16

from coar.components import discover
from coar.forward import run_masked
from coar.masks import sample_masks
from coar.outputs import lm_margin, margin


def workload(name: str, n: int, seq: int) -> tuple[torch.nn.Module, object, torch.Tensor, torch.Tensor, Callable]:
    """(model, components, inputs, labels, output fn) of one published setup, at its input size."""
    torch.manual_seed(0)
    if name == "gpt2":
        import coar.hf_adapters  # noqa: F401  (registers GPT-2's Conv1D rows)
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config()).eval()
        tokens = torch.randint(0, model.config.vocab_size, (n, seq))
        return model, discover(model, "weight_rows", exclude=["lm_head"]), tokens, tokens, lm_margin
    model, size, kinds = {
        "cifar_resnet18": (resnet18(num_classes=10), 32, "conv"),
        "resnet50": (resnet50(), 224, "conv"),
        "vit_b_16": (vit_b_16(), 224, "weight_rows"),
    }[name]
    model.eval()
    return model, discover(model, kinds), torch.randn(n, 3, size, size), torch.zeros(n, dtype=torch.long), margin


def median_seconds(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mask_row_bytes(n_components: int, alpha: float, rows: int = 2000) -> float:
    """Stored bytes per mask row with coar's settings (bool, row chunks of ~1 MiB, gzip 4)."""
    masks = sample_masks(0, 0, rows, n_components, alpha)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "masks.h5"
        with h5py.File(path, "w") as f:
            chunk = max(1, min(rows, (1 << 20) // (4 * n_components)))
            f.create_dataset("masks", data=masks, chunks=(chunk, n_components), compression="gzip", compression_opts=4)
        return path.stat().st_size / rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["cifar_resnet18", "resnet50", "vit_b_16", "gpt2"])
    p.add_argument("--n", type=int, default=8, help="examples per pass")
    p.add_argument("--k", type=int, default=2, help="masks per pass")
    p.add_argument("--seq", type=int, default=256, help="GPT-2 tokens per example")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"device {a.device}, {a.threads} thread(s), n={a.n} examples x k={a.k} masks per pass, median of {a.reps}")
    print("model | components N | plain s/example | ablated s/example | ablated/plain | mask row bytes a=0.05 | a=0.025")
    for name in a.models:
        model, components, inputs, labels, output_fn = workload(name, a.n, a.seq)
        model, inputs, labels = model.to(a.device), inputs.to(a.device), labels.to(a.device)
        masks = sample_masks(0, 0, a.k, len(components), 0.05)
        batch = inputs.repeat(a.k, *[1] * (inputs.dim() - 1))
        with torch.no_grad():
            plain = median_seconds(lambda: model(batch), a.reps) / len(batch)
        ablated = median_seconds(lambda: run_masked(model, components, masks, inputs, labels, output_fn,
                                                    masks_per_pass=a.k, max_batch=a.k * a.n), a.reps) / len(batch)
        row05, row025 = (mask_row_bytes(len(components), alpha) for alpha in (0.05, 0.025))
        print(f"{name} | {len(components)} | {plain:.4f} | {ablated:.4f} | {ablated / plain:.2f} | {row05:.0f} | {row025:.0f}")


if __name__ == "__main__":
    main()
