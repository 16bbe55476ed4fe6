"""Networks. Small modules named after what they compute."""
from __future__ import annotations

import math

import torch
from torch import nn


def mlp(d_in: int, d_out: int, hidden: int, layers: int) -> nn.Sequential:
    """`layers` linear layers with SiLU (Swish) between them, as in the authors' 2-D models."""
    dims = [d_in] + [hidden] * (layers - 1) + [d_out]
    mods = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        mods.append(nn.Linear(a, b))
        if i < layers - 1:
            mods.append(nn.SiLU())
    return nn.Sequential(*mods)


class FourierEmbedding(nn.Module):
    """Fixed random Fourier features of a scalar (EDM's embedding of c_noise)."""

    def __init__(self, dim: int, scale: float):
        super().__init__()
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)

    def forward(self, t):
        x = t.to(torch.float32).outer(2 * math.pi * self.freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class DenoiserMLP(nn.Module):
    """F(x, c_noise) for vector data: an MLP on [x, embedding(c_noise)]."""

    def __init__(self, dim: int, hidden: int, layers: int, emb_dim: int, emb_scale: float):
        super().__init__()
        self.emb = FourierEmbedding(emb_dim, emb_scale)
        self.net = mlp(dim + emb_dim, dim, hidden, layers)

    def forward(self, x, c_noise):
        return self.net(torch.cat([x, self.emb(c_noise)], dim=1))


def count_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())
