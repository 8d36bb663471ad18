"""A small Llama trained offline on Python's own documentation: the modern language preset's task.

The tinylm task (coar/tasks/tinylm.py: CPython's help() text, character-level, held-out
paragraphs, `lm_margin`) with a Llama architecture instead of GPT-2: rotary positions, RMSNorm,
grouped-query attention (fewer key/value heads than query heads) and a gated SwiGLU MLP, as in
Llama, Mistral and Qwen2. Its heads, KV groups and MLP neurons are found by coar.lm_components.
"""

from __future__ import annotations

from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import coar.hf_adapters  # noqa: F401  registers the decoder adapters (also when a saved task is unpickled)
from coar.task import Task
from coar.tasks import tinylm

DEFAULT_PARAMS = {
    **tinylm.DEFAULT_PARAMS,
    "layers": 2,
    "heads": 4,  # query heads
    "kv_heads": 2,  # key/value heads, each shared by heads / kv_heads query heads
    "width": 64,
    "neurons": 128,  # gated MLP hidden units per layer
    "n_examples": 100,
}


def build_model(vocab_size: int, p: dict) -> nn.Module:
    """A Llama architecture without dropout nor special tokens; positions up to `seq_len`."""
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=int(p["width"]), intermediate_size=int(p["neurons"]),
                         num_hidden_layers=int(p["layers"]), num_attention_heads=int(p["heads"]),
                         num_key_value_heads=int(p["kv_heads"]), max_position_embeddings=int(p["seq_len"]),
                         attention_dropout=0.0, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return LlamaForCausalLM(config)


def task(params: dict) -> Task:
    """Train the small Llama and return the task attributing `lm_margin` on held-out paragraphs.

    Params (all optional): see DEFAULT_PARAMS (those of tinylm, plus `kv_heads`).
    """
    return tinylm.language_task(params, DEFAULT_PARAMS, "tinyllama task", build_model)
