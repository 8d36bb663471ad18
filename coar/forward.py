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
from coar.constants import DEFAULT_MASKS_PER_PASS, DEFAULT_MAX_BATCH
from coar.examples import Examples, TensorExamples, first_inputs
from coar.exactness import TOLERANCE, fold_problems, probe_layout
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
    inputs: torch.Tensor | Examples,
    labels: torch.Tensor | None,
    output_fn: OutputFn,
    *,
    masks_per_pass: int = DEFAULT_MASKS_PER_PASS,
    max_batch: int = DEFAULT_MAX_BATCH,
    mode: Mode = "weight",
    fills: list[torch.Tensor] | None = None,
    reference_inputs: torch.Tensor | None = None,
    progress: bool = False,
    check: bool = True,
    precision: str = "fp32",
) -> np.ndarray:
    """Outputs of the ablated model: entry [i, z] is `output_fn` on example z under mask i.

    `masks` is (m x N) bool, True = ablated. Each forward pass holds `masks_per_pass` masks
    times up to `max_batch // masks_per_pass` examples (halved on out-of-memory). The model must be
    in eval mode. `precision` ("fp32", "bf16", "fp16") runs the passes under autocast; outputs are
    float32. The examples are tensors `inputs` and `labels`, or a batch source (coar.examples) as
    `inputs` with `labels` None; a source is read once per block of masks.
    Before any pass, `coar.exactness.probe_layout` finds where each hooked tensor holds the
    batch and refuses groups the masks ablate that it cannot reach; every pass then checks that
    each group it ablates was reached (`check=False` skips that check, for benchmarks only).
    """
    masks = torch.as_tensor(masks, dtype=torch.bool)
    if masks_per_pass < 1 or max_batch < 1:
        raise ValueError("masks_per_pass and max_batch must be >= 1")
    if model.training:
        raise ValueError("run_masked needs the model in eval mode (call model.eval()): BatchNorm and dropout would mix masks")
    device = next(model.parameters()).device
    check_precision(precision, device)
    examples = inputs if labels is None else TensorExamples(inputs.to(device), labels.to(device))
    n = len(examples)
    per_pass = PassSize(min(n, max_batch // masks_per_pass))
    out = np.empty((len(masks), n), dtype=np.float32)
    probe = first_inputs(examples, 2).to(device)
    layout = probe_layout(model, components, probe)
    used = masks.any(0)
    used_groups = [i for i, g in enumerate(components.groups) if bool(used[g.start : g.stop].any())]
    problems = {**layout.problems, **fold_problems(model, components, layout, probe[:1], used_groups)}
    refused = [f"{components.groups[i].module} ({components.groups[i].kind}): {problems[i]}"
               for i in used_groups if i in problems]
    if refused:
        raise RuntimeError("cannot ablate exactly:\n  " + "\n  ".join(refused))
    ablation = Ablation(model, components, mode=mode, fills=fills, reference_inputs=reference_inputs,
                        batch_dims=layout.batch_dims, folds=layout.folds)
    # Redirected to a log, a bar redraws rarely so the log stays readable.
    bar = tqdm(total=len(masks), unit="mask", disable=not progress, desc="ablated forward",
               mininterval=1 if sys.stderr.isatty() else 15)
    with ablation, autocast(precision, device):
        for m0 in range(0, len(masks), masks_per_pass):
            block = masks[m0 : m0 + masks_per_pass]
            k = len(block)
            ablation.set_masks(block)
            z = 0
            for x, y in examples.batches(per_pass.examples):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if z + len(x) > n:
                    raise ValueError(f"the examples yielded more than their length {n}")

                def run(a: int, b: int) -> torch.Tensor:
                    return output_fn(model(_repeat_rows(x[a:b], k)), _repeat_rows(y[a:b], k))

                for a, b, values in per_pass.chunks(len(x), run):
                    if check:
                        ablation.check_reached()
                    out[m0 : m0 + k, z + a : z + b] = values.float().reshape(k, b - a).cpu().numpy()
                z += len(x)
            if z != n:
                raise ValueError(f"the examples yielded {z} examples, not their length {n}")
            bar.update(k)
    bar.close()
    return out


def check_pass_rows(model: nn.Module, components: ComponentSet, examples: Examples, output_fn: OutputFn, *,
                    masks_per_pass: int = DEFAULT_MASKS_PER_PASS, max_batch: int = DEFAULT_MAX_BATCH) -> None:
    """Refuse a model whose outputs change with the rows of a pass (e.g. a forward that branches
    on the batch size), before any collection: one pass at the collection's real rows
    (`masks_per_pass` masks x `max_batch // masks_per_pass` examples) against the same masks and
    examples one row per pass. The dry pass (coar.exactness) runs 2-3 rows only."""
    x, y = next(iter(examples.batches(min(len(examples), max(1, max_batch // masks_per_pass)))))
    masks = torch.rand(masks_per_pass, len(components), generator=torch.Generator().manual_seed(0)) < 0.5
    masks[0] = False  # one unablated copy of the examples in the pass
    batched = run_masked(model, components, masks, x, y, output_fn, masks_per_pass=masks_per_pass,
                         max_batch=masks_per_pass * len(x))
    single = run_masked(model, components, masks, x, y, output_fn, masks_per_pass=1, max_batch=1)
    error = float(np.abs(batched - single).max() / max(float(np.abs(single).max()), 1e-12))
    if not error <= TOLERANCE:
        raise ValueError(
            f"the model's outputs change with the rows of a forward pass: a pass of {masks_per_pass * len(x)} rows "
            f"({masks_per_pass} masks x {len(x)} examples, as collection runs with masks_per_pass {masks_per_pass} "
            f"and max_batch {max_batch}) differs from one row per pass by relative error {error:.2g}; make the "
            "forward independent of the batch size, or lower max_batch (config key 'max_batch') until this passes"
        )
