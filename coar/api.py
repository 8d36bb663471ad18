"""`coar.attribute`: the whole workflow in one process, for a notebook or a script.

It takes the workflow's code paths, in order: component discovery (coar.components) and the
dry pass that refuses components that cannot be ablated exactly (coar.exactness), masks from the
same random streams as a one-shard run (coar.masks), the fast path and precision of collection
(coar.fastpath, coar.precision), the batched ablated passes (coar.forward.run_masked), the solver
(coar.solver) and, with held-out masks, the evaluate step's scoring (coar.evaluate). With the
same seed, alpha and masks, its training masks are a one-shard run's (`shards: 1`).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from coar.components import ComponentSet, discover
from coar.constants import COMPONENT_KINDS, KIND_PRESETS, SOLVER_METHODS
from coar.examples import DatasetExamples, Examples, TensorExamples, first_inputs
from coar.result import Attributions

ComponentsSpec = str | Sequence[str] | dict | ComponentSet


def attribute(model: nn.Module, examples: Any, *, components: ComponentsSpec = "conv", masks: int = 1000,
              alpha: float = 0.1, method: str = "ols", output_fn: str = "margin", device: str = "auto",
              precision: str = "fp32", heldout_masks: int = 0, seed: int = 0, ablation: str = "weight",
              masks_per_pass: int = 8, max_batch: int | str = 512, progress: bool = True) -> Attributions:
    """Attribute `model`'s output on `examples` to its components (COAR) and return the result.

    examples: a tuple of tensors `(inputs, labels)`, a map-style `torch.utils.data.Dataset` of
        (input, label) pairs (an ImageFolder works as it is), or a DataLoader (its dataset is
        read in order; its sampler and batch size are not used).
    components: a kind ("conv", "linear", "head", "qkv"), a kind preset ("weight_rows", "all"),
        a named preset of coar.presets (e.g. "gpt2_heads"), a list of kinds, a list of module-name
        patterns (e.g. ["layer4.*"]: units of every kind on the modules they match), a dict
        {"kinds", "include", "exclude"} like a config's `components` block, or a ComponentSet.
    masks, alpha, seed: the training masks (one random stream, as a run with one shard).
    method: the solver's estimator; OLS needs more masks than components.
    output_fn: "margin", "lm_margin" or a "package.module:function" spec.
    heldout_masks: > 0 also runs that many held-out masks and records their correlation in
        `info["heldout"]` (the evaluate step's scores) and `info["mean_heldout_correlation"]`.
    The model is put in eval mode on `device`; its weights are not changed (the fast path
    transforms a copy).
    """
    from coar import solver
    from coar.ablation import unit_fills
    from coar.batching import resolve_max_batch
    from coar.exactness import check_components
    from coar.fastpath import FastPath, prepare as prepare_fast
    from coar.forward import run_masked
    from coar.masks import sample_masks
    from coar.outputs import resolve_output_fn
    from coar.precision import autocast, check_precision
    from coar.steps import resolve_device

    if method not in SOLVER_METHODS:
        raise ValueError(f"method must be one of {SOLVER_METHODS}, got {method!r}")
    start = time.perf_counter()
    dev = resolve_device(device)
    check_precision(precision, dev)
    source = as_examples(examples)
    model = model.eval().to(dev)
    found = resolve_components(model, components)
    found, _ = check_components(model, found, first_inputs(source, 2).to(dev))
    if method == "ols" and masks <= len(found):
        raise ValueError(f"{masks} masks for {len(found)} components, but method='ols' needs more masks than "
                         f"components: use masks >= {len(found) + 1}, or method='ridge'")
    fn = resolve_output_fn(output_fn)
    fast = prepare_fast(model, found, unit_fills(model, found, ablation), FastPath())
    rows = resolve_max_batch(max_batch, fast.model, first_inputs(source, 1), dev, lambda: autocast(precision, dev))

    def outputs(purpose: str, count: int) -> tuple[np.ndarray, np.ndarray]:
        x = sample_masks(seed, 0, count, len(found), alpha, purpose)
        y = run_masked(fast.model, found, x, source, None, fn, masks_per_pass=masks_per_pass, max_batch=rows,
                       mode=ablation, fills=fast.fills, progress=progress, precision=precision)
        return x, y

    x, y = outputs("train", masks)
    fit = solver.fit((x, y), method)
    ids = [str(i) for i in range(len(source))]
    info: dict = {"method": method, "n_masks": masks, "alpha": alpha, "seed": seed, "ablation": ablation,
                  "output_fn": output_fn, "precision": precision, "device": str(dev)}
    result = Attributions(fit.weight, fit.bias, found, ids, info)
    if heldout_masks > 0:
        scores = result.evaluate(*outputs("heldout", heldout_masks))
        info.update(heldout=scores, mean_heldout_correlation=scores["mean_correlation"])
    info["seconds"] = time.perf_counter() - start
    return result


def as_examples(examples: Any) -> Examples:
    """`examples` as a batch source (coar.examples): tensors, a Dataset, a DataLoader, or a source."""
    if isinstance(examples, tuple) and len(examples) == 2 and all(isinstance(t, torch.Tensor) for t in examples):
        return TensorExamples(*examples)
    if isinstance(examples, DataLoader):
        return DatasetExamples(examples.dataset)
    if isinstance(examples, Dataset):
        return DatasetExamples(examples)
    if hasattr(examples, "batches") and hasattr(examples, "__len__"):
        return examples
    raise TypeError(f"examples must be a tuple (inputs, labels) of tensors, a torch Dataset or a DataLoader, "
                    f"got {type(examples).__name__}")


def resolve_components(model: nn.Module, components: ComponentsSpec) -> ComponentSet:
    """The ComponentSet that `components` names for `model` (see `attribute`)."""
    from coar.presets import PRESETS

    if isinstance(components, ComponentSet):
        return components
    if isinstance(components, dict):
        return discover(model, components.get("kinds", "all"), components.get("include", ("*",)),
                        components.get("exclude", ()))
    if isinstance(components, str) and components in PRESETS:
        return PRESETS[components].discover(model)
    names = [components] if isinstance(components, str) else list(components)
    if all(n in COMPONENT_KINDS or n in KIND_PRESETS for n in names):
        return discover(model, names[0] if len(names) == 1 else names)
    return discover(model, "all", include=names)
