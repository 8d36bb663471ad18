"""Model output functions: the scalar f(z) per example that COAR attributes.

Every output function has the signature ``fn(output, labels) -> Tensor (B,)`` (float), where
``output`` is what the model returned (a logits tensor, or an object with ``.logits`` such as a
Hugging Face ``ModelOutput``) and ``labels`` the batch's targets. Tasks name their output function
by a string (a registry name or ``"package.module:function"``) so a saved task stays loadable.
"""

from collections.abc import Callable
from typing import Any

import torch

from coar.spec import import_object

OutputFn = Callable[[Any, torch.Tensor], torch.Tensor]

IGNORE_INDEX = -100
"""Label value marking padding positions (the Hugging Face convention)."""


def get_logits(output: Any) -> torch.Tensor:
    """The logits tensor of a model's return value: the tensor itself or its ``.logits``."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(
        f"model output must be a Tensor or have a Tensor `.logits` attribute, got {type(output).__name__}"
    )


def _margin_last_dim(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``logit[y] - max_{y' != y} logit[y']`` along the last dimension, in float32, exact under ties.

    The other classes' maximum is taken after overwriting the correct class with -inf (one copy
    of the logits, no boolean mask: LM logits are large), so a tie with the correct class gives 0.
    """
    targets = targets.unsqueeze(-1)
    correct = logits.gather(-1, targets).squeeze(-1)
    best_other = logits.clone().scatter_(-1, targets, float("-inf")).amax(dim=-1)
    return correct.float() - best_other.float()


def margin(output: Any, labels: torch.Tensor) -> torch.Tensor:
    """Correct-class margin of a classifier: logits (B, C), labels (B,) class indices -> (B,)."""
    logits = get_logits(output)
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"margin expects logits (B, C) and labels (B,), got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    return _margin_last_dim(logits, labels.long())


def lm_margin(output: Any, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token margin of a language model over each sequence's real tokens.

    logits (B, T, V); labels (B, T) token ids with -100 at padding. Position t predicts
    labels[t + 1]; its margin counts when both labels[t] and labels[t + 1] are real. Padding is
    excluded exactly, so the result equals the computation on the unpadded sequence.
    """
    logits = get_logits(output)
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"lm_margin expects logits (B, T, V) and labels (B, T), got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    labels = labels.long()
    targets = labels[:, 1:]
    counted = (labels[:, :-1] != IGNORE_INDEX) & (targets != IGNORE_INDEX)
    per_position = _margin_last_dim(logits[:, :-1], targets.clamp(min=0))
    totals = torch.where(counted, per_position, 0.0).sum(dim=1)
    counts = counted.sum(dim=1)
    if bool((counts == 0).any()):
        rows = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"lm_margin needs at least two real tokens per sequence; rows {rows} have fewer")
    return totals / counts


OUTPUT_FUNCTIONS: dict[str, OutputFn] = {"margin": margin, "lm_margin": lm_margin}


def resolve_output_fn(spec: str) -> OutputFn:
    """The output function named by ``spec``: a key of OUTPUT_FUNCTIONS or "package.module:function"."""
    if ":" in spec:
        return import_object(spec, kind="output function")
    try:
        return OUTPUT_FUNCTIONS[spec]
    except KeyError:
        raise ValueError(
            f"unknown output function {spec!r}: use one of {sorted(OUTPUT_FUNCTIONS)} "
            "or a 'package.module:function' spec"
        ) from None
