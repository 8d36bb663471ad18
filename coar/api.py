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
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from coar.components import ComponentSet, discover
from coar.constants import COMPONENT_KINDS, KIND_PRESETS, SOLVER_METHODS, SURROGATE_KINDS
from coar.config import schema_defaults
from coar.examples import DatasetExamples, Examples, TensorExamples, first_inputs
from coar.masks import whole_rounds
from coar.result import Attributions
from coar.rounds import RoundScore, StopRule, judge, new_stream, score_stream

if TYPE_CHECKING:
    from coar.solver import SplitStream

ComponentsSpec = str | Sequence[str] | dict | ComponentSet


def attribute(model: nn.Module, examples: Any, *, components: ComponentsSpec = "conv", masks: int | str = 1000,
              alpha: float = 0.1, method: str = "ols", output_fn: str = "margin", device: str = "auto",
              precision: str = "fp32", heldout_masks: int = 0, seed: int = 0, ablation: str = "weight",
              masks_per_pass: int = 8, max_batch: int | str = 512, masks_auto: dict | None = None,
              surrogate: str | dict | None = None, progress: bool = True) -> Attributions:
    """Attribute `model`'s output on `examples` to its components (COAR) and return the result.

    examples: a tuple of tensors `(inputs, labels)`, a map-style `torch.utils.data.Dataset` of
        (input, label) pairs (an ImageFolder works as it is), or a DataLoader (its dataset is
        read in order; its sampler and batch size are not used).
    components: a kind ("conv", "linear", "head", "qkv"), a kind preset ("weight_rows", "all"),
        a named preset of coar.presets (e.g. "gpt2_heads"), a list of kinds, a list of module-name
        patterns (e.g. ["layer4.*"]: units of every kind on the modules they match), a dict
        {"kinds", "include", "exclude"} like a config's `components` block, or a ComponentSet.
    masks, alpha, seed: the training masks (one random stream, as a run with one shard).
        masks="auto" grows them in rounds as a workflow run with `masks: auto` does (coar.rounds),
        scored on the `heldout_masks` (required then); `masks_auto` overrides the config block's
        keys (round_masks, default 1000; min_gain, confidence, max_masks). The result equals
        that of `masks=info["n_masks"]` bit for bit; `info["rounds"]` holds every round's score.
    method: the solver's estimator; OLS needs more masks than components.
    output_fn: "margin", "lm_margin" or a "package.module:function" spec.
    heldout_masks: > 0 also runs that many held-out masks and records their correlation in
        `info["heldout"]` (the evaluate step's scores) and `info["mean_heldout_correlation"]`.
    surrogate: "projected_quadratic" also fits a surrogate beyond linear COAR on the same training
        masks (coar.solver.surrogate.ProjectedQuadratic, its basis from the fitted weights, as the
        workflow's fit-surrogate step does), kept as `result.surrogate`; a dict like a config's
        `surrogate` block ({"kind", "rank", "penalty"}) sets its rank (default 10) and penalty
        (default 10). With heldout_masks it is scored on the same held-out masks:
        `info["heldout_surrogate"]` and `info["mean_heldout_correlation_surrogate"]`.
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
    wanted = _surrogate_settings(surrogate)
    auto = masks == "auto"
    if auto:
        rule, round_size = _auto_settings(masks_auto or {})
        if heldout_masks < 2:
            raise ValueError("masks='auto' scores every round on held-out masks: give heldout_masks (e.g. 100)")
    elif isinstance(masks, str) or masks_auto is not None:
        raise ValueError(f"masks must be a number or 'auto' (masks_auto goes with 'auto'), got masks={masks!r}")
    start = time.perf_counter()
    dev = resolve_device(device)
    check_precision(precision, dev)
    source = as_examples(examples)
    model = model.eval().to(dev)
    found = resolve_components(model, components)
    found, _ = check_components(model, found, first_inputs(source, 2).to(dev))
    most = rule.max_masks if auto else masks
    estimator = None  # the surrogate, its rank and mask budget checked against the sizes before any collection
    if wanted is not None:
        from coar.solver.surrogate import ProjectedQuadratic

        estimator = ProjectedQuadratic(wanted["rank"], wanted["penalty"], threads=None)
        estimator.check_sizes(len(found), len(source), most)
    if method == "ols" and most <= len(found):
        raise ValueError(f"{most} masks for {len(found)} components, but method='ols' needs more masks than "
                         f"components: use {'max_masks' if auto else 'masks'} >= {len(found) + 1}, or method='ridge'")
    fn = resolve_output_fn(output_fn)
    fast = prepare_fast(model, found, unit_fills(model, found, ablation), FastPath())
    rows = resolve_max_batch(max_batch, fast.model, first_inputs(source, 1), dev, lambda: autocast(precision, dev))

    def outputs(purpose: str, count: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Rows start..count of the purpose's mask stream and their outputs."""
        x = sample_masks(seed, 0, count, len(found), alpha, purpose)[start:]
        y = run_masked(fast.model, found, x, source, None, fn, masks_per_pass=masks_per_pass, max_batch=rows,
                       mode=ablation, fills=fast.fills, progress=progress, precision=precision)
        return x, y

    heldout = outputs("heldout", heldout_masks) if heldout_masks > 0 else None
    info: dict = {"method": method, "alpha": alpha, "seed": seed, "ablation": ablation,
                  "output_fn": output_fn, "precision": precision, "device": str(dev)}
    kept: list[tuple[np.ndarray, np.ndarray]] = []  # the training rows, for the surrogate

    def train_rows(stop: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rows = outputs("train", stop, start)
        if estimator is not None:
            kept.append(rows)
        return rows

    if auto:
        stream, scores = _grow(lambda start, stop: train_rows(stop, start), len(found), len(source), method,
                               heldout, rule, round_size)
        train, val = stream.finish()
        fit = solver.fit_stats(train, method, val=val)
        info.update(n_masks=stream.offset, rounds=[score.to_json() for score in scores])
    else:
        fit = solver.fit(train_rows(masks), method)
        info["n_masks"] = masks
    ids = [str(i) for i in range(len(source))]
    fitted = None
    if estimator is not None:
        fitted = estimator.fit_chunks(kept, fit.weight)
        info["surrogate"] = {**wanted, "basis_method": method, "n_masks": fitted.n_masks_}
    result = Attributions(fit.weight, fit.bias, found, ids, info, surrogate=fitted)
    if heldout is not None:
        scores = result.evaluate(*heldout)
        info.update(heldout=scores, mean_heldout_correlation=scores["mean_correlation"])
        if fitted is not None:
            scores = result.evaluate_surrogate(*heldout)
            info.update(heldout_surrogate=scores, mean_heldout_correlation_surrogate=scores["mean_correlation"])
    info["seconds"] = time.perf_counter() - start
    return result


def _surrogate_settings(surrogate: str | dict | None) -> dict | None:
    """{"kind", "rank", "penalty"} of `attribute`'s surrogate (the config block surrogate's
    defaults, with what is given), or None for none."""
    if surrogate is None:
        return None
    settings = schema_defaults("surrogate")
    given = {"kind": surrogate} if isinstance(surrogate, str) else surrogate
    if not isinstance(given, dict) or (unknown := sorted(set(given) - set(settings))):
        raise ValueError(f"surrogate must be a kind {SURROGATE_KINDS} or a dict with keys {sorted(settings)}, "
                         f"got {surrogate!r}")
    settings.update(given)
    if settings["kind"] is None:
        return None
    if settings["kind"] not in SURROGATE_KINDS:
        raise ValueError(f"surrogate kind must be one of {SURROGATE_KINDS}, got {settings['kind']!r}")
    return settings


def _auto_settings(overrides: dict) -> tuple[StopRule, int]:
    """The stopping rule and round size of `masks="auto"`: the config block masks_auto's defaults
    (rounds of 1000 masks where a run's default is one shard's), with `overrides`."""
    settings = {**schema_defaults("masks_auto"), "round_masks": 1000}
    if unknown := sorted(set(overrides) - set(settings)):
        raise ValueError(f"unknown masks_auto keys {unknown}; known: {sorted(settings)}")
    settings.update(overrides)
    size = int(settings["round_masks"])
    return StopRule(float(settings["min_gain"]), float(settings["confidence"]),
                    whole_rounds(int(settings["max_masks"]), size)), size


def _grow(collect, n_components: int, n_examples: int, method: str, heldout: tuple[np.ndarray, np.ndarray],
          rule: StopRule, round_size: int) -> tuple[SplitStream, list[RoundScore]]:
    """Rounds of `round_size` masks (collect(start, stop) gives their rows and outputs) added to
    one stream of statistics, each scored on `heldout` and judged by `rule`, until it says stop."""
    stream, scores, before = new_stream(n_components, n_examples, method), [], None
    while not scores or not scores[-1].stop:
        stream.push(*collect(stream.offset, stream.offset + round_size))
        correlation = score_stream(stream, method, *heldout)
        scores.append(judge(len(scores), stream.offset, correlation, before, rule))
        before = correlation
    return stream, scores


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
