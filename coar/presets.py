"""Named component sets: the published ones, and the heads and MLP neurons users ask for.

A preset is the (kinds, include, exclude) triple of `coar.components.discover`, i.e. exactly a
config's `components` block (`Preset.as_config()`). Patterns start with "*" so they also match
inside a wrapper module (e.g. "lm.transformer.h.0.attn").

Published sets (counts on the real architectures, reproduced by tests/test_transformers.py):
- `resnet50_filters`: torchvision ResNet-50 conv filters without the downsample convs, 22,720.
- `vit_weight_rows`: torchvision ViT-B/16 rows of every encoder weight (q/k/v in-projection,
  out_proj, both MLP layers), 82,944.
- `gpt2_weight_rows`: Hugging Face GPT-2 (124M) rows of attn.c_attn, attn.c_proj, mlp.c_fc and
  mlp.c_proj, 64,512. Conv1D stores its weight (in, out), so a row is an input feature
  (coar.hf_adapters), as in the reference code.

Heads and MLP neurons, per family (`gpt2_*`, `bert_*`, `vit_*`: `heads`, `mlp_neurons`,
`heads_neurons`): a head is one head's slice of the attention output projection's input. An MLP
neuron is, for GPT-2, a row of mlp.c_proj's (in, out) weight, so ablating it removes the
neuron's output; for BERT (and MiniLM) and ViT (torchvision's or Hugging Face's), a row of the
MLP's first Linear, so "weight" ablation sets the neuron's pre-activation to its bias and "zero"
ablation to 0 (GELU(0) = 0, i.e. the neuron's output is removed).

Hugging Face decoders (`llama_*`, `mistral_*`, `qwen2_*`, `gemma2_*`, `phi3_*`, `gpt_neox_*`,
`opt_*`: `heads`, `neurons`, `heads_neurons`; MoE families `mixtral_*`, `qwen2_moe_*` also
`experts`, `heads_experts`, and `heads_neurons_experts` where the model has dense MLPs too): the
structural kinds of coar.lm_components (`head`, `neuron`, `expert`), which every decoder family
names alike, so these presets differ only in which kinds a family has. A config selects one
with `components: {preset: NAME}`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from coar.components import ComponentSet, discover


@dataclass(frozen=True)
class Preset:
    """A named component set: the arguments of `coar.components.discover`."""

    kinds: tuple[str, ...]
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def discover(self, model: nn.Module) -> ComponentSet:
        """The preset's components of `model`."""
        return discover(model, self.kinds, self.include, self.exclude)

    def as_config(self) -> dict:
        """The preset as a config's `components` block."""
        return {"kinds": list(self.kinds), "include": list(self.include), "exclude": list(self.exclude)}


ATTENTION_AND_MLP = {
    "gpt2": ("*.attn", "*mlp.c_proj"),
    "bert": ("*.attention", "*intermediate.dense"),
    "vit": ("*attention", "*mlp.0", "*mlp.fc1"),  # torchvision (self_attention, mlp.0) and Hugging Face (attention, mlp.fc1)
}
"""Per family: the attention modules that own the heads, then the modules whose units are MLP neurons."""


def _family_presets(family: str, attention: str, *mlp: str) -> dict[str, Preset]:
    return {
        f"{family}_heads": Preset(("head",), (attention,)),
        f"{family}_mlp_neurons": Preset(("linear",), mlp),
        f"{family}_heads_neurons": Preset(("head", "linear"), (attention, *mlp)),
    }


DECODER_KINDS = {
    "llama": ("head", "neuron"), "mistral": ("head", "neuron"), "qwen2": ("head", "neuron"),
    "gemma2": ("head", "neuron"), "phi3": ("head", "neuron"), "gpt_neox": ("head", "neuron"), "opt": ("head", "neuron"),
    "mixtral": ("head", "expert"), "qwen2_moe": ("head", "neuron", "expert"),  # Qwen2-MoE: its shared expert's neurons
}
"""Per Hugging Face decoder family: the structural kinds it has (KV groups are offered by kind, not preset)."""


def _decoder_presets(family: str, kinds: tuple[str, ...]) -> dict[str, Preset]:
    """Every non-empty combination of `kinds` in order, named e.g. "llama_heads_neurons"."""
    plural = {"head": "heads", "neuron": "neurons", "expert": "experts"}
    combos = [tuple(k for i, k in enumerate(kinds) if bits >> i & 1) for bits in range(1, 2 ** len(kinds))]
    return {f"{family}_{'_'.join(plural[k] for k in combo)}": Preset(combo) for combo in combos}


PRESETS: dict[str, Preset] = {
    "resnet50_filters": Preset(("conv",), exclude=("*downsample*",)),
    "vit_weight_rows": Preset(("linear", "qkv"), ("*encoder.layers.*",)),
    "gpt2_weight_rows": Preset(("linear",), ("*attn.c_attn", "*attn.c_proj", "*mlp.c_fc", "*mlp.c_proj")),
    **{name: p for family, patterns in ATTENTION_AND_MLP.items() for name, p in _family_presets(family, *patterns).items()},
    **{name: p for family, kinds in DECODER_KINDS.items() for name, p in _decoder_presets(family, kinds).items()},
}


def preset(name: str) -> Preset:
    """The preset called `name`, with an error that lists the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown component preset {name!r}; choose from {sorted(PRESETS)}") from None
