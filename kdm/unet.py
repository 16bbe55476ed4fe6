"""Two UNets for images: EDM's DDPM++ UNet (`SongUNet`, params kind `songunet`) and a compact one
(`CompactUNet`, kind `unet`) for small images on a CPU budget.

SongUNet is NVlabs/edm's SongUNet (training/networks.py), weight-compatible with its checkpoints:

The DDPM++ configuration only (positional noise embedding, standard encoder and decoder, [1, 1] resampling
filter, one attention head, skip scale sqrt(1/2), the embedding added as a per-channel shift before the
second norm). Module and parameter names follow EDM's, so `EDMPrecond(SongUNet(...))` loads an EDM
network's state dict with strict=True (kdm/teachers.py). Noise level -> sinusoidal embedding (+ class
label) -> MLP; encoder of residual blocks with 2x2 FIR down-sampling blocks; mid blocks; decoder with
skip connections and FIR up-sampling blocks; GroupNorm, SiLU and a 3x3 conv to the output.

CompactUNet keeps DDPM++'s residual blocks but drops what costs most at 8x8: strided-conv / nearest
resampling instead of resampling blocks, no mid blocks, and a per-channel scale and shift from the
embedding. On the digits it has 0.6x the compute of a SongUNet of the same widths, and trained better
teachers and students in the same time (FID 0.62 / 0.75 against 1.25 / 1.84 for a one-level SongUNet).

Both serve the teacher (with EDM preconditioning), KDM's encoders and decoder, and KD (kdm/nets.py:
constant time input).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SKIP_SCALE = math.sqrt(0.5)       # residual sums are scaled to keep unit variance


def _groups(channels: int) -> int:
    """EDM's GroupNorm groups, min(32, channels // 4); reduced until it divides `channels` (EDM's own
    choice always divides the widths of its configs, but a small decoder block may concatenate e.g. 96 + 48)."""
    g = max(1, min(32, channels // 4))
    while channels % g:
        g -= 1
    return g


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels), channels, eps=1e-6)


class Conv2d(nn.Conv2d):
    """A 'same'-padded conv, optionally preceded by 2x FIR up- or down-sampling with a separable filter
    (EDM's non-fused resampling). The filter is a buffer, as in EDM's checkpoints; [1, 1] is nearest
    up-sampling and 2x2 average pooling."""

    def __init__(self, c_in: int, c_out: int, kernel: int, up: bool = False, down: bool = False,
                 resample_filter=(1, 1)):
        super().__init__(c_in, c_out, kernel, padding=kernel // 2)
        self.up, self.down = up, down
        if up or down:
            f = torch.as_tensor(resample_filter, dtype=torch.float32)
            self.register_buffer("resample_filter", (f.outer(f) / f.sum().square())[None, None])

    def forward(self, x):
        if self.up or self.down:
            f = self.resample_filter.to(x.dtype).tile(x.shape[1], 1, 1, 1)      # one filter per channel
            pad = (f.shape[-1] - 1) // 2
            if self.up:   # 4x: each input pixel spreads over four outputs
                x = F.conv_transpose2d(x, f * 4, groups=x.shape[1], stride=2, padding=pad)
            else:
                x = F.conv2d(x, f, groups=x.shape[1], stride=2, padding=pad)
        return super().forward(x)


class PositionalEmbedding(nn.Module):
    """DDPM++'s sinusoidal embedding of the noise label: [sin(t w_i), cos(t w_i)] with w_i = 10000^(-i/(C/2-1))
    (EDM's embedding with endpoint=True after its sin/cos swap)."""

    def __init__(self, channels: int, max_positions: int = 10000):
        super().__init__()
        self.channels, self.max_positions = channels, max_positions

    def forward(self, t):
        half = self.channels // 2
        freqs = (1 / self.max_positions) ** (torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1))
        x = t.to(torch.float32).outer(freqs)
        return torch.cat([x.sin(), x.cos()], dim=1)


class UNetBlock(nn.Module):
    """Residual block: GroupNorm, SiLU, 3x3 conv (optionally resampling), + embedding shift, GroupNorm, SiLU,
    dropout, 3x3 conv; a 1x1 (resampling) skip conv when the shape changes; optional one-head self-attention."""

    def __init__(self, c_in: int, c_out: int, emb_channels: int, dropout: float, attention: bool = False,
                 up: bool = False, down: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.dropout = c_in, c_out, dropout
        self.norm0 = group_norm(c_in)
        self.conv0 = Conv2d(c_in, c_out, 3, up=up, down=down)
        self.affine = nn.Linear(emb_channels, c_out)
        self.norm1 = group_norm(c_out)
        self.conv1 = Conv2d(c_out, c_out, 3)
        self.skip = Conv2d(c_in, c_out, 1, up=up, down=down) if c_in != c_out or up or down else None
        self.attention = attention
        if attention:
            self.norm2 = group_norm(c_out)
            self.qkv = Conv2d(c_out, 3 * c_out, 1)
            self.proj = Conv2d(c_out, c_out, 1)

    def forward(self, x, emb):
        h = self.conv0(F.silu(self.norm0(x)))
        h = F.silu(self.norm1(h + self.affine(emb)[:, :, None, None]))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        x = (h + (x if self.skip is None else self.skip(x))) * SKIP_SCALE
        if self.attention:
            b, c, hh, ww = x.shape
            # EDM's qkv layout interleaves per channel: channel 3i + j is (q, k, v)[j] of channel i
            q, k, v = self.qkv(self.norm2(x)).reshape(b, c, 3, hh * ww).transpose(1, 3).unbind(2)
            a = F.scaled_dot_product_attention(q, k, v)                # (b, hw, c), softmax(q k^T / sqrt(c)) v
            x = (self.proj(a.transpose(1, 2).reshape(b, c, hh, ww)) + x) * SKIP_SCALE
        return x


class SongUNet(nn.Module):
    """forward(x, noise_labels, class_labels=None) -> same shape as x, with out_channels channels.

    `class_labels`: one-hot rows (label_dim > 0). `augment_dim` only holds the weights of EDM's augmentation
    conditioning (its CIFAR-10 networks have 9); no augmentation labels are ever given, as at EDM's sampling.
    """

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, model_channels: int = 32,
                 channel_mult=(1, 2), num_blocks: int = 1, attn_resolutions=(), dropout: float = 0.0,
                 label_dim: int = 0, augment_dim: int = 0):
        super().__init__()
        emb_ch = 4 * model_channels
        self.label_dim = label_dim
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_label = nn.Linear(label_dim, model_channels) if label_dim else None
        self.map_augment = nn.Linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = nn.Linear(model_channels, emb_ch)
        self.map_layer1 = nn.Linear(emb_ch, emb_ch)

        def block(c_in, c_out, **kw):
            return UNetBlock(c_in, c_out, emb_ch, dropout, **kw)

        self.enc = nn.ModuleDict()
        c = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(c, model_channels, 3)
                c = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = block(c, c, down=True)
            for i in range(num_blocks):
                self.enc[f"{res}x{res}_block{i}"] = block(c, model_channels * mult, attention=res in attn_resolutions)
                c = model_channels * mult
        skips = [m.out_channels for m in self.enc.values()]      # every encoder output feeds the decoder

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = block(c, c, attention=True)
                self.dec[f"{res}x{res}_in1"] = block(c, c)
            else:
                self.dec[f"{res}x{res}_up"] = block(c, c, up=True)
            for i in range(num_blocks + 1):      # attention only after the last block of a resolution
                self.dec[f"{res}x{res}_block{i}"] = block(c + skips.pop(), model_channels * mult,
                                                          attention=i == num_blocks and res in attn_resolutions)
                c = model_channels * mult
        self.dec[f"{img_resolution}x{img_resolution}_aux_norm"] = group_norm(c)      # the output head, last
        self.dec[f"{img_resolution}x{img_resolution}_aux_conv"] = Conv2d(c, out_channels, 3)

    def forward(self, x, noise_labels, class_labels=None):
        emb = self.map_noise(noise_labels.reshape(-1).expand(x.shape[0]))
        if self.map_label is not None:
            _check_labels(class_labels, x.shape[0], self.label_dim)
            # as EDM: one-hot rows times sqrt(label_dim)
            emb = emb + self.map_label(class_labels.to(emb.dtype) * math.sqrt(self.label_dim))
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))
        skips = []
        for m in self.enc.values():
            x = m(x, emb) if isinstance(m, UNetBlock) else m(x)
            skips.append(x)
        *blocks, (_, norm), (_, conv) = self.dec.items()
        for name, m in blocks:
            if "_block" in name:
                x = torch.cat([x, skips.pop()], dim=1)
            x = m(x, emb)
        return conv(F.silu(norm(x)))


class CompactBlock(nn.Module):
    """Residual block: GroupNorm, SiLU, 3x3 conv, embedding scale and shift, GroupNorm, SiLU, dropout, 3x3 conv;
    a 1x1 skip conv when the width changes; optional one-head self-attention."""

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
        x = (h + self.skip(x)) * SKIP_SCALE
        if self.attention:
            b, c, hh, ww = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(b, 3, c, hh * ww).unbind(1)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            x = (x + self.proj(a.transpose(1, 2).reshape(b, c, hh, ww))) * SKIP_SCALE
        return x


class CompactUNet(nn.Module):
    """forward(x, noise_labels, class_labels=None) -> same shape as x, with out_channels channels."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, model_channels: int = 32,
                 channel_mult=(1, 2), num_blocks: int = 1, attn_resolutions=(), dropout: float = 0.0,
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
                self.enc.append(CompactBlock(c, model_channels * mult, emb_ch, dropout, res in attn_resolutions))
                c = model_channels * mult
                skips.append(c)
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_blocks + 1):
                self.dec.append(CompactBlock(c + skips.pop(), model_channels * mult, emb_ch, dropout,
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
            _check_labels(class_labels, x.shape[0], self.label_dim)
            emb = emb + self.map_label(class_labels.to(emb.dtype))
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))
        h = self.conv_in(x)
        hs = [h]
        for layer in self.enc:
            h = layer(h, emb) if isinstance(layer, CompactBlock) else layer(h)
            hs.append(h)
        for layer in self.dec:
            h = layer(torch.cat([h, hs.pop()], dim=1), emb) if isinstance(layer, CompactBlock) else layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def _check_labels(class_labels, n: int, label_dim: int) -> None:
    if class_labels is None or class_labels.shape != (n, label_dim):
        raise ValueError(f"class_labels: expected shape {(n, label_dim)}, got "
                         f"{None if class_labels is None else tuple(class_labels.shape)}")


UNETS = {"unet": CompactUNet, "songunet": SongUNet}       # params net.kind -> class
