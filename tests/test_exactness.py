"""Exact or refused, on every architecture family: batched ablation equals a deep copy with the
weight rows zeroed by hand, or the dry pass refuses the groups it cannot reproduce, naming why.

The reference here is written independently of coar's adapters: plain indexing of each module's
weight by its type. Each case runs at two alphas and k in {1, 3} masks per pass, on tiny widths
and inputs so the whole file stays cheap.
"""

import copy
import json
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import convnext, densenet, maxvit, swin_transformer, vision_transformer

from coar import cli, steps
from coar.ablation import Ablation, ablate_weights_
from coar.baselines import leave_one_out
from coar.components import ComponentSet, discover
from coar.exactness import check_components, probe_layout
from coar.forward import run_masked
from coar.outputs import margin
from tests.models import randomize_batchnorm_

ALPHAS = (0.1, 0.4)
TOLERANCE = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def zero_by_hand(model: nn.Module, components, mask: torch.Tensor) -> nn.Module:
    """The published ablation, spelled out: a deep copy with the ablated units' weights zeroed."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for g in components.groups:
            units = mask[g.start : g.stop].nonzero().flatten().tolist()
            module = model.get_submodule(g.module)
            for u in units:
                if g.kind == "head":
                    proj = getattr(module, "out_proj", None) or getattr(module, "c_proj", None) \
                        or getattr(module, "o_proj", None) or module.output.dense
                    per_head = proj.weight.shape[0 if type(proj).__name__ == "Conv1D" else 1] // g.size
                    cols = slice(u * per_head, (u + 1) * per_head)
                    if type(proj).__name__ == "Conv1D":  # stored (in, out)
                        proj.weight[cols] = 0
                    else:
                        proj.weight[:, cols] = 0
                elif g.kind == "qkv":
                    module.in_proj_weight[u] = 0
                elif g.kind == "neuron" and isinstance(module, nn.Linear):  # an input column of the down projection
                    module.weight[:, u] = 0
                elif isinstance(module, nn.modules.conv._ConvTransposeNd):  # weight (in, out / groups, ...)
                    per_in, per_out = module.in_channels // module.groups, module.out_channels // module.groups
                    grp, j = divmod(u, per_out)
                    module.weight[grp * per_in : (grp + 1) * per_in, j] = 0
                else:  # Conv, Linear: rows are output channels; HF Conv1D: rows are input features
                    module.weight[u] = 0
    return model


def main_output(out) -> torch.Tensor:
    while not isinstance(out, torch.Tensor):
        out = out[0]
    return out


@torch.no_grad()
def batched(model, components, masks, x) -> torch.Tensor:
    layout = probe_layout(model, components, x)
    assert not layout.problems, layout.problems
    with Ablation(model, components, masks, batch_dims=layout.batch_dims, folds=layout.folds) as ablation:
        out = main_output(model(x.repeat(len(masks), *([1] * (x.dim() - 1)))))
        ablation.check_reached()
    return out.reshape(len(masks), len(x), *out.shape[1:])


@torch.no_grad()
def assert_exact(model, components, x, seed=0):
    """Batched == zeroed-by-hand copies, at two alphas and k in {1, 3}; and the masks matter."""
    unablated = main_output(model(x))
    changed = False
    g = torch.Generator().manual_seed(seed)
    for alpha in ALPHAS:
        for k in (1, 3):
            masks = torch.rand(k, len(components), generator=g) < alpha
            masks[:, torch.randint(len(components), (1,), generator=g)] = True  # never an empty mask
            got = batched(model, components, masks, x)
            want = torch.stack([main_output(zero_by_hand(model, components, m)(x)) for m in masks])
            scale = want.abs().max().clamp(min=1e-12)
            assert float((got - want).abs().max() / scale) < TOLERANCE, (alpha, k)
            changed |= float((want - unablated).abs().max() / scale) > 1e-3
    assert changed, "the ablations must change the output for the comparison to mean anything"


def images(size=32, n=2, channels=3):
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(1))


class Classifier(nn.Module):
    """Tokens -> a torch transformer -> mean -> logits; `transformer` takes (B, T, E) or (T, B, E)."""

    def __init__(self, body: nn.Module, batch_first: bool, decoder: bool = False):
        super().__init__()
        self.embed, self.body, self.head = nn.Linear(6, 16), body, nn.Linear(16, 4)
        self.batch_first, self.decoder = batch_first, decoder

    def forward(self, x):
        t = self.embed(x)
        t = t if self.batch_first else t.transpose(0, 1)
        t = self.body(t, t) if self.decoder else self.body(t)
        t = t if self.batch_first else t.transpose(0, 1)
        return self.head(t.mean(1))


def encoder(batch_first: bool, norm_first: bool) -> nn.Module:
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first, norm_first=norm_first)
    return Classifier(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), batch_first)


def tokens():
    return torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(1))


class Convs(nn.Module):
    """conv1d, grouped, depthwise and transposed (1d and grouped 2d) convolutions."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(3, 8, 3)
        self.grouped = nn.Conv1d(8, 8, 3, groups=4)
        self.depthwise = nn.Conv1d(8, 8, 3, groups=8)
        self.up = nn.ConvTranspose1d(8, 6, 3, stride=2)
        self.up2d = nn.ConvTranspose2d(6, 4, 3, groups=2)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.up(torch.relu(self.depthwise(torch.relu(self.grouped(torch.relu(self.c1(x))))))))
        h = self.up2d(h.unsqueeze(-1).expand(-1, -1, -1, 4))
        return self.head(h.mean((2, 3)))


class Twice(nn.Module):
    """One Linear block called twice per forward (a shared module, not tied weights)."""

    def __init__(self):
        super().__init__()
        self.inp, self.block, self.out = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.block(torch.tanh(self.block(self.inp(x))))))


class Tied(nn.Module):
    """Two Linears that share one weight Parameter (tied weights)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.out(self.b(torch.relu(self.a(x))))


def with_random_head(model: nn.Module) -> nn.Module:
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision zero-initialises the classifier
    return model


def torchvision_models():
    tv = torchvision.models
    return {
        "resnet18": (lambda: tv.resnet18(num_classes=10), images(), {}),
        "mobilenet_v2": (lambda: tv.mobilenet_v2(num_classes=10, width_mult=0.25), images(), {}),
        "mobilenet_v3_small": (lambda: tv.mobilenet_v3_small(num_classes=10), images(), {}),
        "efficientnet_b0": (lambda: tv.efficientnet_b0(num_classes=10), images(), {}),
        "regnet_y_400mf": (lambda: tv.regnet_y_400mf(num_classes=10), images(), {}),
        "convnext": (lambda: convnext.ConvNeXt([convnext.CNBlockConfig(8, 16, 1), convnext.CNBlockConfig(16, None, 1)],
                                               num_classes=10), images(), {"kinds": ["conv", "linear"]}),
        "densenet": (lambda: densenet.DenseNet(8, (2, 2), 8, num_classes=10), images(), {}),
        "shufflenet_v2_x0_5": (lambda: tv.shufflenet_v2_x0_5(num_classes=10), images(), {}),
        "squeezenet1_1": (lambda: tv.squeezenet1_1(num_classes=10), images(64), {}),
        "vit": (lambda: with_random_head(vision_transformer.VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=10)),
                images(), {"kinds": "all"}),
        "maxvit": (lambda: maxvit.MaxVit((32, 32), 8, 2, [8, 16], [1, 1], 4, 0.0, num_classes=10), images(),
                   {"kinds": ["conv", "linear"]}),
    }


EXACT = {
    **torchvision_models(),
    **{f"transformer_encoder_batch_first={bf}_norm_first={nf}": (lambda bf=bf, nf=nf: encoder(bf, nf), tokens(), {"kinds": "all"})
       for bf in (False, True) for nf in (False, True)},
    "transformer_encoder_decoder": (lambda: Classifier(nn.Transformer(16, 2, 1, 1, 32, dropout=0.0), False, decoder=True),
                                    tokens(), {"kinds": "all"}),
    "convs_1d_grouped_depthwise_transposed": (Convs, torch.randn(2, 3, 12, generator=torch.Generator().manual_seed(1)),
                                              {"kinds": ["conv", "linear"]}),
    "module_called_twice": (Twice, tokens()[:, 0], {"kinds": ["linear"]}),
}


def build(factory) -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm_(factory()).eval()


@pytest.mark.parametrize("name", list(EXACT))
def test_batched_ablation_is_exact(name):
    factory, x, kwargs = EXACT[name]
    model = build(factory)
    components = discover(model, **kwargs)
    kept, problems = check_components(model, components, x)
    assert problems == {} and kept == components
    assert_exact(model, components, x)


def test_swin_attention_is_refused_by_the_dry_pass_then_the_rest_is_exact():
    # torchvision's Swin calls F.linear(x, self.qkv.weight): its qkv and proj Linears never run.
    model = build(lambda: swin_transformer.SwinTransformer([4, 4], 8, [1, 1], [2, 2], [2, 2], stochastic_depth_prob=0.0,
                                                           num_classes=10))
    x = images()
    components = discover(model, kinds=["conv", "linear"])
    with pytest.raises(ValueError, match=r"features\.1\.0\.attn\.qkv \(linear\): never called.*uses its weight directly"):
        check_components(model, components, x)
    kept, problems = check_components(model, components, x, on_problem="drop")
    assert {m.rsplit(".", 1)[1] for m, _ in problems} == {"qkv", "proj"} and len(problems) == 4
    assert_exact(model, kept, x)


def test_tied_weights_are_refused_everywhere_and_the_rest_is_exact():
    model = build(Tied)
    components = discover(model, kinds=["linear"])
    with pytest.raises(ValueError, match=r"'a' shares a weight Parameter with \['b'\] \(tied weights\)"):
        check_components(model, components, torch.randn(2, 8))
    with pytest.raises(ValueError, match="tied weights"):  # the batched path and permanent edits refuse alike
        Ablation(model, components)
    with pytest.raises(ValueError, match="tied weights"):
        ablate_weights_(copy.deepcopy(model), components, torch.ones(len(components), dtype=torch.bool))
    kept, problems = check_components(model, components, torch.randn(2, 8), on_problem="drop")
    assert set(problems) == {("a", "linear"), ("b", "linear")}
    assert_exact(model, kept, torch.randn(2, 8))


def test_sequence_first_linear_is_masked_on_its_batch_axis():
    model = build(lambda: encoder(batch_first=False, norm_first=False))
    components = discover(model, kinds=["linear"], include=["body.*"])
    layout = probe_layout(model, components, tokens())
    linear1 = [g.module for g in components.groups].index("body.layers.0.linear1")
    assert layout.batch_dims[linear1] == 1  # (T, B, F) inside a sequence-first encoder


class Folded(nn.Module):
    """Several rows per example in the batch (the tokens folded in), grouped by example or by token."""

    def __init__(self, by_example: bool):
        super().__init__()
        self.by_example = by_example
        self.lin, self.out = nn.Linear(6, 4), nn.Linear(4, 3)

    def forward(self, x):
        rows = x if self.by_example else x.transpose(0, 1)  # (B, T, 6) or (T, B, 6)
        h = self.lin(rows.reshape(-1, 6))  # (B * T, 4)
        h = h.reshape(x.shape[0], -1, 4) if self.by_example else h.reshape(-1, x.shape[0], 4).transpose(0, 1)
        return self.out(h.mean(1))


def test_a_batch_folded_with_each_examples_rows_together_is_exact():
    model = build(lambda: Folded(by_example=True))
    components = discover(model, kinds=["linear"])
    layout = probe_layout(model, components, tokens())
    assert layout.folds[[g.module for g in components.groups].index("lin")] == 5  # 5 tokens per example
    kept, problems = check_components(model, components, tokens())
    assert not problems
    assert_exact(model, kept, tokens())


def test_a_batch_folded_token_by_token_is_refused():
    model = build(lambda: Folded(by_example=False))
    components = discover(model, kinds=["linear"])
    with pytest.raises(ValueError, match=r"lin \(linear\): its batch axis holds 5 rows per example, not grouped by example"):
        check_components(model, components, tokens())
    masks = torch.zeros(2, len(components), dtype=torch.bool)
    masks[0, :4] = True
    with pytest.raises(RuntimeError, match="not grouped by example"):
        run_masked(model, components, masks, tokens(), torch.zeros(2, dtype=torch.long), margin)


def hf_models():
    transformers = pytest.importorskip("transformers")
    gpt2 = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=16)
    bert = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=16)
    vit = transformers.ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=32)
    ids = torch.randint(50, (2, 8), generator=torch.Generator().manual_seed(1))
    return {
        "gpt2": (lambda: transformers.GPT2LMHeadModel(gpt2), ids, {"kinds": "all", "exclude": ["lm_head"]}),
        "bert": (lambda: transformers.BertModel(bert), ids, {"kinds": "all"}),
        "vit": (lambda: transformers.ViTModel(vit), images(16), {"kinds": "all"}),
    }


@pytest.mark.parametrize("name", ["gpt2", "bert", "vit"])
def test_hugging_face_models_are_exact(name):
    factory, x, kwargs = hf_models()[name]
    model = build(factory)
    components = discover(model, **kwargs)
    assert {g.kind for g in components.groups} >= {"head", "linear"}
    assert check_components(model, components, x)[1] == {}
    assert_exact(model, components, x)


def test_gpt2_lm_head_tied_to_the_embedding_is_refused():
    factory, x, _ = hf_models()["gpt2"]
    model = build(factory)
    components = discover(model, kinds=["linear"], include=["*", "lm_head"])  # left out unless named
    with pytest.raises(ValueError, match=r"lm_head \(linear\): 'lm_head' shares a weight Parameter with \['transformer.wte'\]"):
        check_components(model, components, x)


def test_the_fused_fast_path_is_real_and_coar_turns_it_off_while_hooked():
    model = build(lambda: encoder(batch_first=True, norm_first=False))
    attention = model.body.layers[0].self_attn
    calls = []
    attention.forward = lambda *args, **kwargs: calls.append(1)  # replaced per instance, as coar does for heads
    with torch.no_grad():
        model(tokens())
    del attention.forward
    assert calls == [], "in eval mode PyTorch's fused encoder layer never calls its attention module"
    components = discover(model, kinds=["head"])
    with Ablation(model, components, torch.ones(1, len(components), dtype=torch.bool)) as ablation:
        with torch.no_grad():
            model(tokens())
        ablation.check_reached()
    assert torch.backends.mha.get_fastpath_enabled(), "the fast path is restored afterwards"


def test_leave_one_out_on_a_fast_path_encoder_gives_the_true_head_effects():
    model = build(lambda: encoder(batch_first=True, norm_first=False))
    components = discover(model, kinds=["head"])
    x, y = tokens(), torch.tensor([0, 1])
    result = leave_one_out(model, components, x, y, margin, masks_per_pass=3)
    with torch.no_grad():
        base = margin(model(x), y)
        true = torch.stack([margin(zero_by_hand(model, components, torch.eye(len(components))[i].bool())(x), y) - base
                            for i in range(len(components))], dim=1)
    assert torch.allclose(torch.from_numpy(result.weight), true, atol=1e-5)
    assert true.abs().min() > 1e-4, "every head must matter for the comparison to mean anything"


class BypassedLater(nn.Module):
    """Calls its Linear for the first three passes, then uses its weight directly (bypassing hooks)."""

    def __init__(self):
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.passes = 0

    def forward(self, x):
        self.passes += 1
        h = torch.relu(self.inp(x))
        h = self.mid(h) if self.passes <= 3 else nn.functional.linear(h, self.mid.weight, self.mid.bias)
        return self.out(torch.relu(h))


def test_every_pass_checks_that_its_ablated_modules_were_reached_not_only_the_first():
    model = build(BypassedLater)
    components = discover(model, kinds=["linear"], include=["mid"])
    masks = torch.ones(2, len(components), dtype=torch.bool)  # one mask per pass: passes 3 and 4 after the probe's two
    x = tokens()[:, 0]
    with pytest.raises(RuntimeError, match=r"never reached 1 module\(s\).*\['mid'\].*uses its weight directly"):
        run_masked(model, components, masks, x, torch.zeros(2, dtype=torch.long), margin, masks_per_pass=1)
    assert model.passes == 4


def test_hugging_face_adapters_register_when_discovery_meets_a_transformers_model():
    pytest.importorskip("transformers")
    code = (
        "import sys, transformers\n"
        "from coar.presets import preset\n"
        "assert 'coar.hf_adapters' not in sys.modules\n"
        "config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=16)\n"
        "components = preset('gpt2_weight_rows').discover(transformers.GPT2LMHeadModel(config))\n"
        "assert 'coar.hf_adapters' in sys.modules\n"
        "print(len(components))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == 2 * (16 + 16 + 16 + 64)  # c_attn, c_proj, c_fc rows (in = 16), mlp.c_proj rows (64)


def test_discovery_never_imports_transformers_for_other_models():
    code = (
        "import sys, torchvision\n"
        "from coar.components import discover\n"
        "discover(torchvision.models.resnet18())\n"
        "assert 'transformers' not in sys.modules and 'coar.hf_adapters' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_prepare_refuses_inexact_groups_by_name_or_drops_them_when_asked(tmp_path):
    with pytest.raises(ValueError, match=r"(?s)2 component group\(s\) cannot be ablated exactly.*'a' shares.*"
                                         r"components\.unreachable: drop"):
        steps.prepare("tests.tasks_for_tests:tied", {}, ["linear"], ["*"], [], tmp_path / "strict")
    assert not (tmp_path / "strict" / "components.json").exists()
    assert cli.main(["prepare", "--run-dir", str(tmp_path / "lenient"), "--task", "tests.tasks_for_tests:tied",
                     "--kinds", "linear", "--unreachable", "drop"]) == 0
    info = json.loads((tmp_path / "lenient" / "prepare.json").read_text())
    assert [(d["module"], d["kind"]) for d in info["dropped_components"]] == [("a", "linear"), ("b", "linear")]
    assert "tied weights" in info["dropped_components"][0]["reason"]
    assert [g.module for g in ComponentSet.load(tmp_path / "lenient" / "components.json").groups] == ["out"]
