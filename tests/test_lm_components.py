"""Heads, KV groups, MLP neurons and MoE experts of Hugging Face decoders: discovered from module
structure on every family, and exact (batched ablation equals a deep copy whose weights are zeroed
by hand) or refused.

The reference zeroes weights by plain indexing, written from each family's published layout and
independently of coar's adapters. Models are built from tiny configs with random weights.
"""

import copy
import json
import logging
from pathlib import Path

import pytest
import torch
import transformers as hf
import yaml
from torch import nn

from coar import cli
from coar.components import discover
from coar.exactness import check_components
from coar.lm_components import ExpertsAdapter
from coar.presets import PRESETS, preset
from coar.tasks import tinyllama
from tests.test_exactness import ALPHAS, batched

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]
COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=32, bos_token_id=1, eos_token_id=2, pad_token_id=0)
FAMILIES = {
    "llama": lambda: hf.LlamaForCausalLM(hf.LlamaConfig(**COMMON, num_key_value_heads=2)),
    "mistral": lambda: hf.MistralForCausalLM(hf.MistralConfig(**COMMON, num_key_value_heads=2)),
    "qwen2": lambda: hf.Qwen2ForCausalLM(hf.Qwen2Config(**COMMON, num_key_value_heads=1)),  # multi-query, q/k/v bias
    "gemma2": lambda: hf.Gemma2ForCausalLM(hf.Gemma2Config(**COMMON, num_key_value_heads=2, head_dim=16)),
    "phi3": lambda: hf.Phi3ForCausalLM(hf.Phi3Config(**COMMON, num_key_value_heads=2)),  # fused qkv_proj
    "gpt_neox": lambda: hf.GPTNeoXForCausalLM(hf.GPTNeoXConfig(**COMMON)),  # fused query_key_value, per head
    "opt": lambda: hf.OPTForCausalLM(hf.OPTConfig(vocab_size=64, hidden_size=32, ffn_dim=48, num_hidden_layers=2,
                                                  num_attention_heads=4, max_position_embeddings=32,
                                                  word_embed_proj_dim=32, pad_token_id=0)),
    "gpt2": lambda: hf.GPT2LMHeadModel(hf.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                                     bos_token_id=1, eos_token_id=2)),
    "mixtral": lambda: hf.MixtralForCausalLM(hf.MixtralConfig(**COMMON, num_key_value_heads=2, num_local_experts=4,
                                                              num_experts_per_tok=2)),
    "qwen2_moe": lambda: hf.Qwen2MoeForCausalLM(hf.Qwen2MoeConfig(
        **COMMON, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
        shared_expert_intermediate_size=40)),
}
KINDS = ["head", "kv_group", "neuron", "expert"]
EXPECTED = {  # components per layer: query heads, KV groups, MLP neurons, experts
    "llama": {"head": 4, "kv_group": 2, "neuron": 48}, "mistral": {"head": 4, "kv_group": 2, "neuron": 48},
    "qwen2": {"head": 4, "kv_group": 1, "neuron": 48}, "gemma2": {"head": 4, "kv_group": 2, "neuron": 48},
    "phi3": {"head": 4, "kv_group": 2, "neuron": 48}, "gpt_neox": {"head": 4, "neuron": 48},
    "opt": {"head": 4, "neuron": 48}, "gpt2": {"head": 4, "neuron": 128},
    "mixtral": {"head": 4, "kv_group": 2, "expert": 4},
    "qwen2_moe": {"head": 4, "kv_group": 2, "expert": 4, "neuron": 40},  # neurons of the shared expert
}
TOKENS = torch.tensor([[5, 9, 3, 7, 7, 3], [6, 4, 8, 11, 10, 12]])




class Logits(nn.Module):
    """`model(ids)` = the decoder's logits (a plain tensor, the batch on dim 0)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids).logits


def build(family: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return Logits(FAMILIES[family]()).to(dtype).eval()


def zero_by_hand(model: Logits, components, mask: torch.Tensor) -> nn.Module:
    """The published ablation spelled out per family: a deep copy with the units' weights zeroed."""
    model = copy.deepcopy(model)
    config = model.lm.config
    with torch.no_grad():
        for g in components.groups:
            module = model.get_submodule(g.module)
            for u in mask[g.start : g.stop].nonzero().flatten().tolist():
                if g.kind == "head":  # its slice of the output projection's input
                    proj = next(getattr(module, n) for n in ("o_proj", "dense", "out_proj", "c_proj") if hasattr(module, n))
                    size = (proj.weight.shape[0] if isinstance(proj, hf.pytorch_utils.Conv1D) else proj.in_features) // g.size
                    if isinstance(proj, hf.pytorch_utils.Conv1D):  # stored (in, out)
                        proj.weight[u * size : (u + 1) * size] = 0
                    else:
                        proj.weight[:, u * size : (u + 1) * size] = 0
                elif g.kind == "kv_group":  # its k and v rows
                    d = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
                    if hasattr(module, "qkv_proj"):  # q rows, then k rows, then v rows
                        q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
                        module.qkv_proj.weight[q + u * d : q + (u + 1) * d] = 0
                        module.qkv_proj.weight[q + kv + u * d : q + kv + (u + 1) * d] = 0
                    else:
                        module.k_proj.weight[u * d : (u + 1) * d] = 0
                        module.v_proj.weight[u * d : (u + 1) * d] = 0
                elif g.kind == "neuron":  # its column of the down projection's input
                    if isinstance(module, hf.pytorch_utils.Conv1D):
                        module.weight[u] = 0
                    else:
                        module.weight[:, u] = 0
                elif g.kind == "expert":  # its fused weights
                    module.gate_up_proj[u] = 0
                    module.down_proj[u] = 0
                else:
                    raise AssertionError(f"no reference for kind {g.kind}")
    return model


@torch.no_grad()
def assert_exact(model, components, x, tolerance=1e-4, seed=0, ks=(1, 3), alphas=ALPHAS):
    """Batched == zeroed-by-hand copies at each alpha and k; and the masks change the output."""
    unablated = model(x)
    changed = False
    g = torch.Generator().manual_seed(seed)
    for alpha in alphas:
        for k in ks:
            masks = torch.rand(k, len(components), generator=g) < alpha
            masks[:, torch.randint(len(components), (1,), generator=g)] = True  # never an empty mask
            got = batched(model, components, masks, x).float()
            want = torch.stack([zero_by_hand(model, components, m)(x) for m in masks]).float()
            scale = want.abs().max()
            assert float((got - want).abs().max() / scale) < tolerance, (alpha, k)
            changed |= float((want - unablated.float()).abs().max() / scale) > 1e-2
    assert changed, "the ablations must change the output for the comparison to mean anything"


@pytest.mark.parametrize("family", FAMILIES)
def test_heads_kv_groups_neurons_and_experts_are_found_from_module_structure(family):
    components = discover(build(family), KINDS)
    per_layer = {}
    for g in components.groups:
        per_layer[g.kind] = per_layer.get(g.kind, 0) + g.size / 2
    assert per_layer == EXPECTED[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_ablation_equals_zeroed_weight_copies(family):
    model = build(family)
    components = discover(model, KINDS)
    assert check_components(model, components, TOKENS)[1] == {}
    assert_exact(model, components, TOKENS)


def test_bf16_batched_ablation_equals_zeroed_weight_copies_to_bf16_rounding():
    model = build("llama", torch.bfloat16)
    assert_exact(model, discover(model, KINDS), TOKENS, tolerance=3e-2, alphas=(0.1,))


def test_an_ablated_expert_adds_nothing_and_the_router_still_picks_it():
    model = build("mixtral")
    components = discover(model, ["expert"])
    mask = torch.zeros(1, len(components), dtype=torch.bool)
    mask[0, components.index("lm.model.layers.0.mlp.experts", 1, "expert")] = True
    picked = []
    router = model.lm.model.layers[0].mlp.gate
    hook = router.register_forward_hook(lambda m, i, out: picked.append(out[2]))
    got = batched(model, components, mask, TOKENS)[0]
    hook.remove()
    assert (picked[-1] == 1).any(), "expert 1 must be routed to for the test to mean anything"
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.lm.model.layers[0].mlp.experts.down_proj[1] = 0
        want = edited(TOKENS)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gemma2", "opt"])
def test_a_tied_lm_head_is_left_out_of_default_discovery_with_a_note(family, caplog):
    model = build(family)
    with caplog.at_level(logging.INFO, logger="coar"):
        components = discover(model, ["linear"])
    assert "left out lm.lm_head (linear): its weights are tied to the embedding" in caplog.text
    assert all(g.module != "lm.lm_head" for g in components.groups)
    assert check_components(model, components, TOKENS)[1] == {}


def test_a_tied_lm_head_included_by_name_is_refused():
    model = build("opt")
    components = discover(model, ["linear"], include=["*", "*lm_head"])
    with pytest.raises(ValueError, match=r"lm.lm_head \(linear\): 'lm.lm_head' shares a weight Parameter"):
        check_components(model, components, TOKENS)


def test_mamba_dt_proj_refusal_says_which_exclude_pattern_to_use():
    torch.manual_seed(0)
    model = Logits(hf.MambaForCausalLM(hf.MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                      state_size=4))).eval()
    components = discover(model, ["linear"])
    with pytest.raises(ValueError, match=r"dt_proj \(linear\): never called.*components.exclude: \['\*.dt_proj'\]"):
        check_components(model, components, TOKENS)
    kept = discover(model, ["linear"], exclude=["*.dt_proj"])
    assert check_components(model, kept, TOKENS)[1] == {}


def test_experts_outside_the_fused_layout_are_refused_by_name():
    class Experts(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_experts = 2
            self.experts = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    block = nn.Module()
    block.experts = Experts()
    adapter = ExpertsAdapter()
    with pytest.raises(NotImplementedError, match="not transformers' fused expert layout"):
        adapter.install(block, {adapter.sites(block)[0]: lambda x, dim, units: None})


CHECKPOINTS = {  # published shapes (config.json of each checkpoint); built on the meta device, no weights
    "Llama-3.2-1B": ("llama_heads_neurons", lambda: hf.LlamaForCausalLM(hf.LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, tie_word_embeddings=True))),
    "Llama-3.1-8B": ("llama_heads_neurons", lambda: hf.LlamaForCausalLM(hf.LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8))),
    "Mixtral-8x7B": ("mixtral_heads_experts", lambda: hf.MixtralForCausalLM(hf.MixtralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2))),
}


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_published_checkpoints_have_one_component_per_head_neuron_and_expert_of_their_config(name):
    preset_name, factory = CHECKPOINTS[name]
    with torch.device("meta"):
        model = factory()
    c = model.config
    per_layer = {"head": c.num_attention_heads, "neuron": c.intermediate_size,
                 "expert": getattr(c, "num_local_experts", 0)}
    components = preset(preset_name).discover(model)
    for kind in preset(preset_name).kinds:
        assert sum(g.size for g in components.groups if g.kind == kind) == c.num_hidden_layers * per_layer[kind]
    kv_groups = discover(model, ["kv_group"])
    assert len(kv_groups) == c.num_hidden_layers * c.num_key_value_heads


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "gpt2"])
def test_each_family_preset_finds_its_kinds_on_that_family(family):
    name = max((n for n in PRESETS if n.startswith(f"{family}_") and not n.startswith(f"{family}_moe")), key=len)
    components = preset(name).discover(build(family))
    assert {g.kind for g in components.groups} == set(preset(name).kinds) == set(EXPECTED[family]) - {"kv_group"}


def test_prepare_takes_its_components_from_a_named_preset(tmp_path):
    params = {"steps": 60, "n_examples": 4, "layers": 1, "n_reference": 4}
    assert cli.main(["prepare", "--run-dir", str(tmp_path), "--task", "coar.tasks.tinyllama:task",
                     "--task-params", json.dumps(params), "--kinds", "conv", "--preset", "llama_heads_neurons"]) == 0
    assert json.loads((tmp_path / "prepare.json").read_text())["components_by_kind"] == {"head": 4, "neuron": 128}


def test_the_tinyllama_config_names_the_llama_heads_neurons_preset():
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/presets/tinyllama.yaml").read_text())
    assert config["components"] == {"preset": "llama_heads_neurons"}
    assert config["masks"] > len(preset("llama_heads_neurons").discover(build_tinyllama())), "OLS needs m > N"


def build_tinyllama() -> nn.Module:
    with torch.device("meta"):
        return tinyllama.build_model(104, tinyllama.DEFAULT_PARAMS)
