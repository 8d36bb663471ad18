"""Batched ablated forward passes: k masks x n examples per pass -> an (m x n) output matrix."""

from __future__ import annotations

import sys
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from coar.ablation import Ablation, Mode
from coar.batching import PassSize
from coar.components import ComponentSet
from coar.precision import autocast, check_precision

OutputFn = Callable[[object, torch.Tensor], torch.Tensor]


def _repeat_rows(t: torch.Tensor, k: int) -> torch.Tensor:
    """[t; t; ...; t] (k copies along dim 0): copy j is the batch of mask j."""
    return t.repeat(k, *([1] * (t.dim() - 1)))


@torch.inference_mode()
def run_masked(
    model: nn.Module,
    components: ComponentSet,
    masks: np.ndarray | torch.Tensor,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    output_fn: OutputFn,
    *,
    masks_per_pass: int = 8,
    max_batch: int = 4096,
    mode: Mode = "weight",
    fills: list[torch.Tensor] | None = None,
    reference_inputs: torch.Tensor | None = None,
    progress: bool = False,
    precision: str = "fp32",
) -> np.ndarray:
    """Outputs of the ablated model: entry [i, z] is `output_fn` on example z under mask i.

    `masks` is (m x N) bool, True = ablated. Each forward pass holds `masks_per_pass` masks
    times up to `max_batch // masks_per_pass` examples (halved on out-of-memory). The model must be
    in eval mode. `precision` ("fp32", "bf16", "fp16") runs the passes under autocast; outputs are float32.
    """
    masks = torch.as_tensor(masks, dtype=torch.bool)
    if len(inputs) != len(labels):
        raise ValueError(f"inputs hold {len(inputs)} examples but labels {len(labels)}")
    if masks_per_pass < 1 or max_batch < 1:
        raise ValueError("masks_per_pass and max_batch must be >= 1")
    if model.training:
        raise ValueError("run_masked needs the model in eval mode (call model.eval()): BatchNorm and dropout would mix masks")
    device = next(model.parameters()).device
    check_precision(precision, device)
    inputs, labels = inputs.to(device), labels.to(device)
    n = len(inputs)
    per_pass = PassSize(min(n, max_batch // masks_per_pass))
    out = np.empty((len(masks), n), dtype=np.float32)
    ablation = Ablation(model, components, mode=mode, fills=fills, reference_inputs=reference_inputs)
    # Redirected to a log, a bar redraws rarely so the log stays readable.
    bar = tqdm(total=len(masks), unit="mask", disable=not progress, desc="ablated forward",
               mininterval=1 if sys.stderr.isatty() else 15)
    with ablation, autocast(precision, device):
        for m0 in range(0, len(masks), masks_per_pass):
            block = masks[m0 : m0 + masks_per_pass]
            k = len(block)
            ablation.set_masks(block)
            def run(z0: int, z1: int) -> torch.Tensor:
                return output_fn(model(_repeat_rows(inputs[z0:z1], k)), _repeat_rows(labels[z0:z1], k))

            for z0, z1, values in per_pass.chunks(n, run):
                out[m0 : m0 + k, z0:z1] = values.float().reshape(k, z1 - z0).cpu().numpy()
            if m0 == 0:
                ablation.check_reached()
            bar.update(k)
    bar.close()
    return out
