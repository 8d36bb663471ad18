"""Small real architectures with random weights, shared by the tests."""

import torch
from torch import nn


class ConvAttentionNet(nn.Module):
    """Conv2d, Linear and nn.MultiheadAttention (sequence-first, padding mask) in one model."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.embed = nn.Linear(16, 24)
        self.attn = nn.MultiheadAttention(24, num_heads=4, batch_first=False)
        self.mlp = nn.Sequential(nn.Linear(24, 32), nn.GELU(), nn.Linear(32, 24))
        self.head = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.bn(self.conv1(x)))))
        tokens = self.embed(h.flatten(2).transpose(1, 2))  # (B, T, E)
        seq = tokens.transpose(0, 1)  # (T, B, E)
        pad = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=x.device)
        pad[:, -1] = True  # the last token is padding for every example
        a, _ = self.attn(seq, seq, seq, key_padding_mask=pad, need_weights=False)
        t = (seq + a).transpose(0, 1)
        t = t + self.mlp(t)
        return self.head(t[:, :-1].mean(1))


def randomize_batchnorm_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model
