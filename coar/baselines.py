"""Baseline component attributions that COAR is compared with, in COAR's sign convention.

Every method returns a `coar.attributions.LinearModels`: `weight` (n examples x N components) and
`bias` (n), read like COAR's linear models with the "1 = ablated" mask encoding:

    predicted output under mask x  =  bias + sum_i weight[:, i] * x_i

so `weight[z, i]` is the method's estimate of how much ablating component i changes example
z's output, and `bias` is the unablated output f(z). One `coar.evaluate.predict` serves all.

- `leave_one_out`: ablate each component alone (N masks, batched through `run_masked`);
  weight_i = f(ablate i) - f(nothing). Exact for a model whose output is additive in the units.
- `grad_x_param` (attribution patching): first-order Taylor estimate from one forward and one
  backward pass. Ablation moves unit i's value from a to its fill value (the bias under the
  published `weight` ablation); weight_i = sum over the unit's positions of dOutput/da * (fill - a).
- `conductance` (neuron conductance, Dhamdhere et al. 2018) and `internal_influence` (Leino et
  al. 2018): integrated-gradient scores along the straight path from an all-zero input to the
  input, computed by captum's `LayerConductance` / `InternalInfluence` on each module whose
  output holds the units, summed over each unit's positions. A conv filter or a neuron row is a
  whole channel, which captum's `NeuronConductance` cannot select (it refuses aggregates of
  neurons); by completeness the conductance of a channel (summed over the input features) is
  the sum of `LayerConductance` over the channel's positions, which is what is used. Conductance
  is a unit's share of f(input) - f(zero input), which ablating removes: weight_i = -conductance_i.
  Internal influence is a path-averaged gradient with no notion of the unit's value; ablating a
  unit the output grows with is read as lowering it: weight_i = -influence_i.
  Units that are not a module's own output (attention heads, packed q/k/v rows) cannot be
  named as a captum layer; for them the same path integral (captum's quadrature) runs on the
  adapters' unit sites directly, `captum=False` does so for every unit.
  Token ids cannot be interpolated: for integer inputs the path runs on the output of the
  model's token embedding (zero embeddings to the actual ones, coar.embedding_path), and
  LOO and grad x param need no float inputs at all (the gradient reaches the units through
  the parameters).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from coar.ablation import Mode, bind, install_maskers, remove_all, unit_fills
from coar.attributions import LinearModels
from coar.adapters import output_channel_dim
from coar.components import ComponentSet
from coar.embedding_path import embedded, replaced_output, scaled_output, token_embedding
from coar.exactness import probe_layout
from coar.forward import OutputFn, run_masked

from coar.constants import BASELINE_METHODS as METHODS
from coar.constants import DEFAULT_MASKS_PER_PASS, DEFAULT_MAX_BATCH

Score = Literal["conductance", "internal_influence"]



def leave_one_out(model: nn.Module, components: ComponentSet, inputs: torch.Tensor, labels: torch.Tensor,
                  output_fn: OutputFn, *, mode: Mode = "weight", reference_inputs: torch.Tensor | None = None,
                  masks_per_pass: int = DEFAULT_MASKS_PER_PASS, max_batch: int = DEFAULT_MAX_BATCH, block: int = 1024) -> LinearModels:
    """weight_i = f(ablate component i alone) - f(ablate nothing): N + 1 masks through `run_masked`.

    The one-hot masks are made `block` rows at a time, so memory stays bounded for large N.
    """
    n_components = len(components)
    fills = unit_fills(model, components, mode, reference_inputs)

    def outputs(masks: np.ndarray) -> np.ndarray:
        return run_masked(model, components, masks, inputs, labels, output_fn, masks_per_pass=masks_per_pass,
                          max_batch=max_batch, mode=mode, fills=fills)

    bias = outputs(np.zeros((1, n_components), bool))[0]
    weight = np.empty((len(inputs), n_components), np.float32)
    for c0 in range(0, n_components, block):
        units = np.arange(c0, min(c0 + block, n_components))
        masks = np.zeros((len(units), n_components), bool)
        masks[np.arange(len(units)), units] = True
        weight[:, units] = (outputs(masks) - bias).T
    return LinearModels(weight, bias)


@dataclass
class _Record:
    """One unit tensor seen in a forward pass: its value, its unit dim and units, later its gradient."""

    value: torch.Tensor
    dim: int
    units: slice
    batch: int = 0
    grad: torch.Tensor | None = None


class _SiteRecorder:
    """Masker-like hooks on the components' sites that record each unit tensor and its gradient.

    The gradient hook is registered on the tensor the site produced, so it receives the gradient
    with respect to that value even when the model later modifies it in place (e.g. ReLU(inplace)).
    """

    def __init__(self, model: nn.Module, components: ComponentSet, probe: torch.Tensor):
        self.bound = bind(model, components)
        layout = probe_layout(model, components, probe, self.bound)
        if layout.problems:
            listing = "; ".join(f"{self.bound[i].group.module}: {reason}" for i, reason in layout.problems.items())
            raise RuntimeError(f"cannot attribute these components exactly: {listing}")
        self.batch_dims = layout.batch_dims  # e.g. 1 inside sequence-first encoders
        self.folds = layout.folds  # rows per example, e.g. 3 for the sentences of a triple
        self.records: list[list[_Record]] = [[] for _ in self.bound]

    def _recorder(self, i: int):
        def record(x: torch.Tensor, dim: int, units: slice) -> None:
            if not x.requires_grad:
                raise RuntimeError(f"no gradient reaches the units of {self.bound[i].group.module!r}: "
                                   "the inputs are not floating point and no parameter before them requires grad")
            entry = _Record(x.detach().clone(), dim, units, self.batch_dims[i])
            x.register_hook(lambda g: setattr(entry, "grad", g.detach()))
            self.records[i].append(entry)

        return record

    def __enter__(self) -> "_SiteRecorder":
        self.records = [[] for _ in self.bound]
        self._handles = install_maskers(self.bound, self._recorder)
        return self

    def __exit__(self, *exc) -> None:
        remove_all(self._handles)


def _forward_backward(model: nn.Module, recorder: _SiteRecorder, x: torch.Tensor, y: torch.Tensor,
                      output_fn: OutputFn) -> torch.Tensor:
    """Outputs of one batch; fills `recorder.records` with every unit tensor and d(output)/d(tensor).

    Examples are independent in eval mode, so the gradient of the batch's summed output with
    respect to a unit tensor holds each example's own gradient in its row.
    """
    with torch.enable_grad(), recorder:
        if x.is_floating_point():
            x = x.detach().requires_grad_()
        out = output_fn(model(x), y)
        leaves = [x] if x.requires_grad else [p for p in model.parameters() if p.requires_grad]
        torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    return out.detach()


def _unit_sums(t: torch.Tensor, dim: int, n: int, batch: int = 0) -> torch.Tensor:
    """(n * R at `batch`, ..., units at `dim`, ...) -> (n, units): summed over every other
    dimension (positions).

    A model may run R rows per example inside (e.g. the three sentences of a triple); they are
    adjacent, as in the batched-ablation layout, so example z's rows are z*R .. z*R+R-1.
    """
    t = t.movedim((batch % t.dim(), dim % t.dim()), (0, -1))
    if t.shape[0] % n:
        raise ValueError(f"a unit tensor of batch {t.shape[0]} for {n} examples: rows per example must be whole")
    return t.reshape(n, -1, t.shape[-1]).sum(1)


def _along(values: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """Per-unit values shaped to broadcast along dimension `dim` of an `ndim`-dimensional tensor."""
    shape = [1] * ndim
    shape[dim % ndim] = -1
    return values.reshape(shape)


def _columns(group_start: int, site_size: int, units: slice) -> range:
    """Global component indices of `units` (a slice of a site's unit range)."""
    return range(group_start, group_start + site_size)[units]


def _check_model(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.device:
    if model.training:
        raise ValueError("baselines need the model in eval mode (call model.eval()): BatchNorm would mix examples")
    if len(inputs) != len(labels):
        raise ValueError(f"inputs hold {len(inputs)} examples but labels {len(labels)}")
    return next(model.parameters()).device


def grad_x_param(model: nn.Module, components: ComponentSet, inputs: torch.Tensor, labels: torch.Tensor,
                 output_fn: OutputFn, *, mode: Mode = "weight", reference_inputs: torch.Tensor | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH) -> LinearModels:
    """First-order estimate of each ablation: weight_i = sum over positions of dOutput/da * (fill - a)."""
    device = _check_model(model, inputs, labels)
    recorder = _SiteRecorder(model, components, inputs[:2].to(device))
    fills = [f.to(device) for f in unit_fills(model, components, mode, reference_inputs)]
    weight = torch.zeros(len(inputs), len(components), dtype=torch.float64)
    bias = torch.zeros(len(inputs), dtype=torch.float64)
    for z0 in range(0, len(inputs), max_batch):
        x, y = inputs[z0 : z0 + max_batch].to(device), labels[z0 : z0 + max_batch].to(device)
        bias[z0 : z0 + len(x)] = _forward_backward(model, recorder, x, y, output_fn).double().cpu()
        for b, fill, records in zip(recorder.bound, fills, recorder.records):
            for r in records:
                change = _along(fill[r.units].to(r.value.dtype), r.dim, r.value.dim()) - r.value
                cols = _columns(b.group.start, b.site.size, r.units)
                weight[z0 : z0 + len(x), cols.start : cols.stop] += _unit_sums(r.grad * change, r.dim, len(x), r.batch).double().cpu()
    return LinearModels(weight.float().numpy(), bias.float().numpy())


def _quadrature(score: Score, n_steps: int) -> tuple[list[float], list[float]]:
    """captum's Gauss-Legendre (step sizes, alphas) for `score`, as its layer methods use them."""
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_sizes, alphas = approximation_parameters("gausslegendre")
    k = n_steps + 1 if score == "conductance" else n_steps  # LayerConductance differences n_steps + 1 points
    return step_sizes(k), alphas(k)


def _captum_scores(score: Score, model: nn.Module, module: nn.Module, dim: int, x: torch.Tensor, y: torch.Tensor,
                   output_fn: OutputFn, n_steps: int, embedding: nn.Module | None = None) -> torch.Tensor:
    """captum's LayerConductance / InternalInfluence of `module`'s output units, summed per unit: (B, units).

    With an `embedding` (integer inputs), captum's input is that module's output on `x`, which
    the forward function substitutes while the ids themselves run through the model unchanged.
    """
    from captum.attr import InternalInfluence, LayerConductance

    if embedding is None:
        path_inputs, extra = x, (y,)
        forward = lambda a, t: output_fn(model(a), t)  # noqa: E731
    else:
        path_inputs, extra = embedded(model, embedding, x), (x, y)

        def forward(e: torch.Tensor, ids: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with replaced_output(embedding, e):
                return output_fn(model(ids), t)

    method = (LayerConductance if score == "conductance" else InternalInfluence)(forward, module)
    with torch.enable_grad():
        scores = method.attribute(path_inputs, baselines=0.0, additional_forward_args=extra, n_steps=n_steps,
                                  method="gausslegendre")
    return _unit_sums(scores.detach(), dim, len(x))


def _site_scores(score: Score, model: nn.Module, recorder: _SiteRecorder, groups: list[int], x: torch.Tensor,
                 y: torch.Tensor, output_fn: OutputFn, n_steps: int, out: torch.Tensor,
                 embedding: nn.Module | None = None) -> None:
    """The same path integral on the adapters' unit sites, for `groups`; adds (B, N) scores into `out`.

    The path scales `x`, or with an `embedding` (integer inputs) that module's output.
    """
    step_sizes, alphas = _quadrature(score, n_steps)
    previous: list[list[_Record]] | None = None
    for k, alpha in enumerate(alphas):
        if embedding is None:
            _forward_backward(model, recorder, alpha * x, y, output_fn)
        else:
            with scaled_output(embedding, alpha):
                _forward_backward(model, recorder, x, y, output_fn)
        for i in groups:
            b = recorder.bound[i]
            for j, r in enumerate(recorder.records[i]):
                if score == "internal_influence":
                    term = step_sizes[k] * r.grad
                elif previous is None:
                    continue
                else:  # LayerConductance: gradient at the previous point times the step of the unit's value
                    last = previous[i][j]
                    term = last.grad * (r.value - last.value)
                cols = _columns(b.group.start, b.site.size, r.units)
                out[:, cols.start : cols.stop] += _unit_sums(term, r.dim, len(x), r.batch).double().cpu()
        previous = recorder.records


def integrated(model: nn.Module, components: ComponentSet, inputs: torch.Tensor, labels: torch.Tensor,
               output_fn: OutputFn, *, score: Score, n_steps: int = 50, max_batch: int = DEFAULT_MAX_BATCH,
               captum: bool = True) -> LinearModels:
    """Conductance or internal influence per unit (zero input as the path's start), as -score.

    With `captum`, units that are a module's output (conv filters, linear neurons) are scored
    by captum's layer methods, other units on their sites; without, every unit on its site.
    Integer inputs (token ids) are not scaled: the path runs from zero token embeddings to the
    actual ones, on the output of the model's token embedding (coar.embedding_path). Modules
    that run several rows per example are scored on their sites, which sum each example's rows.
    """
    if score not in ("conductance", "internal_influence"):
        raise ValueError(f"unknown score {score!r}; choose conductance or internal_influence")
    device = _check_model(model, inputs, labels)
    embedding = None if inputs.is_floating_point() else token_embedding(model, inputs[:1].to(device))
    recorder = _SiteRecorder(model, components, inputs[:2].to(device))
    # captum's layer methods need the layer's batch to be the input's: modules whose batch axis is
    # elsewhere or holds several rows per example (the layout probe's finding) go to their sites
    by_captum = [i for i, b in enumerate(recorder.bound) if captum and output_channel_dim(b.adapter) is not None
                 and recorder.batch_dims[i] == 0 and recorder.folds[i] == 1]
    on_sites = [i for i in range(len(recorder.bound)) if i not in by_captum]
    per_batch = max(1, max_batch // (n_steps + 1))
    scores = torch.zeros(len(inputs), len(components), dtype=torch.float64)
    bias = torch.zeros(len(inputs), dtype=torch.float64)
    for z0 in range(0, len(inputs), per_batch):
        x, y = inputs[z0 : z0 + per_batch].to(device), labels[z0 : z0 + per_batch].to(device)
        rows = slice(z0, z0 + len(x))
        with torch.no_grad():
            bias[rows] = output_fn(model(x), y).double().cpu()
        for i in by_captum:
            b = recorder.bound[i]
            scores[rows, b.group.start : b.group.stop] = _captum_scores(
                score, model, b.owner, output_channel_dim(b.adapter), x, y, output_fn, n_steps, embedding).double().cpu()
        if on_sites:
            _site_scores(score, model, recorder, on_sites, x, y, output_fn, n_steps, scores[rows], embedding)
    return LinearModels((-scores).float().numpy(), bias.float().numpy())


def attribute(method: str, model: nn.Module, components: ComponentSet, inputs: torch.Tensor, labels: torch.Tensor,
              output_fn: OutputFn, *, mode: Mode = "weight", reference_inputs: torch.Tensor | None = None,
              masks_per_pass: int = DEFAULT_MASKS_PER_PASS, max_batch: int = DEFAULT_MAX_BATCH, n_steps: int = 50) -> LinearModels:
    """Run baseline `method` (one of METHODS) with the options that apply to it."""
    if method == "loo":
        return leave_one_out(model, components, inputs, labels, output_fn, mode=mode, reference_inputs=reference_inputs,
                             masks_per_pass=masks_per_pass, max_batch=max_batch)
    if method == "grad_x_param":
        return grad_x_param(model, components, inputs, labels, output_fn, mode=mode, reference_inputs=reference_inputs,
                            max_batch=max_batch)
    if method in ("conductance", "internal_influence"):
        return integrated(model, components, inputs, labels, output_fn, score=method, n_steps=n_steps, max_batch=max_batch)
    raise ValueError(f"unknown baseline {method!r}; choose from {list(METHODS)}")
