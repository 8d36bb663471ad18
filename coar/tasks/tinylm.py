"""A small GPT-2 trained offline on Python's own documentation: the language preset's task.

In the spirit of the paper's GPT-2 on TinyStories, without a download: the text is CPython's
`pydoc_data.topics` (the help() pages, about 430k characters, shipped with every CPython), cut
into whitespace-normalised paragraphs. A seeded split holds out paragraphs; the examples are
their first `seq_len` characters (shorter paragraphs stay shorter, so sequences have different
lengths and are right-padded). The tokenizer is character-level, built from the corpus. The task
function trains a `transformers` GPT2LMHeadModel from a small GPT2Config on one CPU thread,
deterministically given `seed`, in about a minute; the output attributed is `lm_margin`, the mean
next-token margin over each sequence's real tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

import coar.hf_adapters  # noqa: F401  registers the GPT-2 adapters (also when a saved task is unpickled)
from coar.outputs import IGNORE_INDEX, lm_margin
from coar.task import Task, restoring
from coar.tasks.params import with_defaults
from coar.training import optimise, single_threaded

DEFAULT_PARAMS = {
    "seed": 0,  # initialisation and training batches
    "split_seed": 0,  # which paragraphs are held out, kept apart so every model seed attributes the same examples
    "n_examples": 200,  # held-out sequences attributed
    "seq_len": 48,  # characters per sequence (training windows and examples)
    "min_len": 16,  # shortest held-out paragraph used as an example
    "layers": 4,
    "heads": 4,
    "width": 64,  # embedding size
    "neurons": 128,  # MLP neurons per layer
    "steps": 800,  # training steps
    "batch_size": 32,
    "lr": 3e-3,
    "n_reference": 64,  # training windows kept as reference_inputs (for mean ablation)
}
PAD_ID = 0  # token id at padding positions of the inputs (the labels hold IGNORE_INDEX there)
HELDOUT_FRACTION = 0.15


def corpus_paragraphs() -> list[str]:
    """Whitespace-normalised paragraphs of CPython's help() topics, in a fixed order."""
    from pydoc_data.topics import topics

    paragraphs = []
    for key in sorted(topics):
        paragraphs += [" ".join(p.split()) for p in topics[key].split("\n\n")]
    return [p for p in paragraphs if p]


class CharTokenizer:
    """Character-level tokenizer: id 0 is padding, ids 1.. are the corpus' characters in sorted order."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self._ids = {c: i + 1 for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        return [self._ids[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i - 1] for i in ids if i != PAD_ID)


class CausalLM(nn.Module):
    """`model(ids)` returns the logits (B, T, V) of a Hugging Face causal LM.

    Sequences are right-padded and attention is causal, so a real token never attends to
    padding: no attention mask is needed and real positions equal the unpadded computation.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits


def right_padded(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of shape (B, T): the sequences padded with PAD_ID (inputs) and IGNORE_INDEX (labels)."""
    width = max(map(len, sequences))
    inputs = torch.full((len(sequences), width), PAD_ID, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for row, s in enumerate(sequences):
        inputs[row, : len(s)] = labels[row, : len(s)] = torch.tensor(s)
    return inputs, labels


def build_model(vocab_size: int, seq_len: int, layers: int, heads: int, width: int, neurons: int) -> GPT2LMHeadModel:
    """A GPT-2 architecture without dropout (so training and ablated evaluation agree) nor special tokens.

    The exact GELU is one native op; GPT-2's default tanh approximation costs a third of the
    ablated forward passes of a model this small.
    """
    config = GPT2Config(vocab_size=vocab_size, n_positions=seq_len, n_embd=width, n_layer=layers, n_head=heads,
                        n_inner=neurons, activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=None, eos_token_id=None)
    return GPT2LMHeadModel(config)


def next_token_loss(logits: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each position's prediction of the next token of `windows`."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))


def train(model: CausalLM, stream: torch.Tensor, p: dict) -> float:
    """AdamW with a cosine schedule on random windows of the training stream; returns the last loss."""
    generator = torch.Generator().manual_seed(int(p["seed"]))
    seq_len, steps = int(p["seq_len"]), int(p["steps"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(p["lr"]), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=float(p["lr"]), total_steps=steps, pct_start=0.05)
    offsets = torch.arange(seq_len)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(steps):
            starts = torch.randint(0, len(stream) - seq_len, (int(p["batch_size"]), 1), generator=generator)
            windows = stream[starts + offsets]
            yield windows, windows

    return optimise(model, optimizer, schedule, batches(), next_token_loss)


@torch.no_grad()
def next_token_accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of real next-token positions the model predicts correctly (argmax)."""
    predicted = model(inputs)[:, :-1].argmax(-1)
    targets = labels[:, 1:]
    counted = (labels[:, :-1] != IGNORE_INDEX) & (targets != IGNORE_INDEX)
    return float((predicted == targets)[counted].float().mean())


def task(params: dict) -> Task:
    """Train the small GPT-2 and return the task attributing `lm_margin` on held-out paragraphs.

    While coar restores a prepared run (coar.task.restoring()), the model is returned untrained.
    Params (all optional): see DEFAULT_PARAMS.
    """
    return language_task(params, DEFAULT_PARAMS, "tinylm task", lambda vocab_size, p: build_model(
        vocab_size, int(p["seq_len"]), *(int(p[k]) for k in ("layers", "heads", "width", "neurons"))))


def language_task(params: dict, defaults: dict, name: str, build: Callable[[int, dict], nn.Module]) -> Task:
    """The help()-text task for any causal LM: `build(vocab_size, params)` makes the untrained
    Hugging Face model, trained here as `task` describes (used by tinylm and tinyllama)."""
    p = with_defaults(params, defaults, name)
    seq_len, min_len = int(p["seq_len"]), int(p["min_len"])
    if not 2 <= min_len <= seq_len:
        raise ValueError(f"{name} needs 2 <= min_len <= seq_len, got min_len={min_len}, seq_len={seq_len}")
    paragraphs = corpus_paragraphs()
    tokenizer = CharTokenizer("\n".join(paragraphs))
    order = np.random.default_rng(int(p["split_seed"])).permutation(len(paragraphs))
    n_heldout = int(len(paragraphs) * HELDOUT_FRACTION)
    heldout = [int(i) for i in order[:n_heldout] if len(paragraphs[i]) >= min_len][: int(p["n_examples"])]
    if len(heldout) < int(p["n_examples"]):
        raise ValueError(f"only {len(heldout)} held-out paragraphs have >= {min_len} characters; lower n_examples")
    stream = torch.tensor(tokenizer.encode("\n".join(paragraphs[i] for i in sorted(order[n_heldout:]))))
    inputs, labels = right_padded([tokenizer.encode(paragraphs[i][:seq_len]) for i in heldout])

    with torch.random.fork_rng(devices=[]):  # seed the initialisation without touching global RNG state
        torch.manual_seed(int(p["seed"]))
        model = CausalLM(build(len(tokenizer), p))
    start = time.perf_counter()
    final_loss = None
    if not restoring():  # a later step loads the prepared weights: no need to train again
        with single_threaded():
            final_loss = train(model, stream, p)
    train_seconds = time.perf_counter() - start
    reference_starts = torch.randint(0, len(stream) - seq_len, (int(p["n_reference"]), 1),
                                     generator=torch.Generator().manual_seed(int(p["seed"]) + 1))
    with torch.no_grad():
        margins = lm_margin(model(inputs), labels)
    return Task(
        model=model,
        inputs=inputs,
        labels=labels,
        output_fn="lm_margin",
        example_ids=[f"paragraph-{i}" for i in heldout],
        reference_inputs=stream[reference_starts + torch.arange(seq_len)],
        info={
            "dataset": "CPython pydoc_data.topics, character-level",
            "params": p,
            "vocab_size": len(tokenizer),
            "n_train_characters": len(stream),
            "n_examples": len(heldout),
            "final_train_loss": final_loss,
            "heldout_next_token_accuracy": next_token_accuracy(model, inputs, labels),
            "heldout_mean_margin": float(margins.mean()),
            "train_seconds": train_seconds,
            "parameters": sum(t.numel() for t in model.parameters()),
        },
    )
