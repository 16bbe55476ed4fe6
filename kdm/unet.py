"""A compact DDPM++ UNet in the style of EDM's SongUNet, sized entirely by its arguments.

Noise level -> sinusoidal positional embedding -> MLP; an optional one-hot class label is mapped into
the same embedding; residual blocks (GroupNorm, SiLU, 3x3 conv) take the embedding as a per-channel
scale and shift; optional self-attention at chosen resolutions; skip connections from encoder to
decoder. Used by the image experiments: the teacher (with EDM preconditioning), KDM's encoders and
decoder, and KD (kdm/nets.py wraps it with a constant time input).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _groups(channels: int) -> int:
    """GroupNorm groups as in EDM (up to 32, at least 4 channels per group), made to divide `channels`
    (a decoder block's input concatenates two widths, e.g. 96 + 48)."""
    g = min(32, max(1, channels // 4))
    while channels % g:
        g -= 1
    return g


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of a scalar (DDPM++'s embedding of the noise level)."""

    def __init__(self, channels: int, max_positions: int = 10000):
        super().__init__()
        self.channels, self.max_positions = channels, max_positions

    def forward(self, t):
        freqs = torch.arange(self.channels // 2, dtype=torch.float32, device=t.device) / (self.channels // 2 - 1)
        freqs = (1 / self.max_positions) ** freqs
        x = t.to(torch.float32).outer(freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class UNetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_channels: int, dropout: float, attention: bool):
        super().__init__()
        self.norm0 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv0 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.affine = nn.Linear(emb_channels, 2 * c_out)
        self.norm1 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv1 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.dropout = dropout
        if attention:
            self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
            self.qkv = nn.Conv2d(c_out, 3 * c_out, 1)
            self.proj = nn.Conv2d(c_out, c_out, 1)
        self.attention = attention

    def forward(self, x, emb):
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        x = (h + self.skip(x)) / math.sqrt(2)
        if self.attention:
            b, c, hh, ww = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(b, 3, c, hh * ww).unbind(1)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            x = (x + self.proj(a.transpose(1, 2).reshape(b, c, hh, ww))) / math.sqrt(2)
        return x


class SongUNet(nn.Module):
    """forward(x, noise_labels, class_labels=None) -> same shape as x, with out_channels channels."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, model_channels: int = 32,
                 channel_mult=(1, 2), num_blocks: int = 2, attn_resolutions=(), dropout: float = 0.0,
                 label_dim: int = 0):
        super().__init__()
        emb_ch = 4 * model_channels
        self.label_dim = label_dim
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_label = nn.Linear(label_dim, model_channels, bias=False) if label_dim else None
        self.map_layer0 = nn.Linear(model_channels, emb_ch)
        self.map_layer1 = nn.Linear(emb_ch, emb_ch)
        self.conv_in = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        self.enc, self.dec = nn.ModuleList(), nn.ModuleList()
        skips, c, res = [model_channels], model_channels, img_resolution
        for level, mult in enumerate(channel_mult):
            if level:
                self.enc.append(nn.Conv2d(c, c, 3, stride=2, padding=1))      # downsample
                res //= 2
                skips.append(c)
            for _ in range(num_blocks):
                self.enc.append(UNetBlock(c, model_channels * mult, emb_ch, dropout, res in attn_resolutions))
                c = model_channels * mult
                skips.append(c)
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_blocks + 1):
                self.dec.append(UNetBlock(c + skips.pop(), model_channels * mult, emb_ch, dropout,
                                          res in attn_resolutions))
                c = model_channels * mult
            if level:
                self.dec.append(nn.Upsample(scale_factor=2, mode="nearest"))
                res *= 2
        self.norm_out = nn.GroupNorm(_groups(c), c)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, x, noise_labels, class_labels=None):
        emb = self.map_noise(noise_labels.reshape(-1).expand(x.shape[0]))
        if self.map_label is not None:
            if class_labels is None or class_labels.shape != (x.shape[0], self.label_dim):
                raise ValueError(f"class_labels: expected shape {(x.shape[0], self.label_dim)}, got "
                                 f"{None if class_labels is None else tuple(class_labels.shape)}")
            emb = emb + self.map_label(class_labels.to(emb.dtype))
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))
        h = self.conv_in(x)
        hs = [h]
        for layer in self.enc:
            h = layer(h, emb) if isinstance(layer, UNetBlock) else layer(h)
            hs.append(h)
        for layer in self.dec:
            h = layer(torch.cat([h, hs.pop()], dim=1), emb) if isinstance(layer, UNetBlock) else layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))
