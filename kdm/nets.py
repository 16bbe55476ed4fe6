"""Networks. Small modules named after what they compute.

Every network a student or teacher uses is built from a params `net` spec by `make_net`: kind `mlp`
(flattened input, the authors' 2-D models), kind `unet` (kdm.unet.CompactUNet, for small images on a CPU
budget) or kind `songunet` (EDM's DDPM++ SongUNet, the authors' image models). All take an optional one-hot
class label. Beside them: the adversary's discriminator and the evaluator's image classifier.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdm.unet import UNETS


def mlp(d_in: int, d_out: int, hidden: int, layers: int) -> nn.Sequential:
    """`layers` linear layers with SiLU (Swish) between them, as in the authors' 2-D models."""
    dims = [d_in] + [hidden] * (layers - 1) + [d_out]
    mods = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        mods.append(nn.Linear(a, b))
        if i < layers - 1:
            mods.append(nn.SiLU())
    return nn.Sequential(*mods)


def one_hot(labels, label_dim: int) -> torch.Tensor | None:
    """Integer class labels as float one-hot rows (None passes through: unconditional)."""
    return None if labels is None else F.one_hot(torch.as_tensor(labels).long(), label_dim).float()


class FourierEmbedding(nn.Module):
    """Fixed random Fourier features of a scalar (EDM's embedding of c_noise)."""

    def __init__(self, dim: int, scale: float):
        super().__init__()
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)

    def forward(self, t):
        x = t.to(torch.float32).outer(2 * math.pi * self.freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class DenoiserMLP(nn.Module):
    """F(x, c_noise) for vector data: an MLP on [x, embedding(c_noise)] (unconditional)."""

    def __init__(self, dim: int, hidden: int, layers: int, emb_dim: int, emb_scale: float):
        super().__init__()
        self.emb = FourierEmbedding(emb_dim, emb_scale)
        self.net = mlp(dim + emb_dim, dim, hidden, layers)

    def forward(self, x, c_noise, class_labels=None):
        return self.net(torch.cat([x, self.emb(c_noise)], dim=1))


class MLPNet(nn.Module):
    """in_shape -> out_shape through an MLP on the flattened input and, if conditional, the one-hot label.

    With `time_input` a last input column holds the constant time `t`, as in the authors' 2-D models (0 for
    E_0 and D, 1 for E_T): a column of zeros changes nothing but the initial weights' draws, a column of ones
    is a second bias of the first layer."""

    def __init__(self, in_shape, out_shape, hidden: int, layers: int, label_dim: int = 0, time_input: bool = False,
                 t: float = 0.0):
        super().__init__()
        self.out_shape, self.label_dim = tuple(out_shape), label_dim
        self.net = mlp(math.prod(in_shape) + label_dim + int(time_input), math.prod(out_shape), hidden, layers)
        if time_input:      # a buffer only when used: without it the state dict is as before the option existed
            self.register_buffer("t", torch.tensor(float(t)))
        self.time_input = time_input

    def forward(self, x, class_labels=None):
        h = x.flatten(1)
        if self.label_dim:
            if class_labels is None or class_labels.shape != (x.shape[0], self.label_dim):
                raise ValueError(f"class_labels: expected shape {(x.shape[0], self.label_dim)}, got "
                                 f"{None if class_labels is None else tuple(class_labels.shape)}")
            h = torch.cat([h, class_labels.to(h.dtype)], dim=1)
        if self.time_input:
            h = torch.cat([h, self.t.to(h.dtype).expand(h.shape[0], 1)], dim=1)
        return self.net(h).reshape(-1, *self.out_shape)


class UNetNet(nn.Module):
    """A UNet (kind unet or songunet) with a constant time input `t`, as the KDM encoders (E_0: 0, E_T: 1) and
    decoder (0) use."""

    def __init__(self, in_shape, out_shape, t: float, kind: str, label_dim: int = 0, **unet):
        super().__init__()
        if tuple(in_shape[1:]) != tuple(out_shape[1:]) or in_shape[1] != in_shape[2]:
            raise ValueError(f"a unet maps square images to the same resolution, got {in_shape} -> {out_shape}")
        self.unet = UNETS[kind](in_shape[1], in_shape[0], out_shape[0], label_dim=label_dim, **unet)
        self.register_buffer("t", torch.tensor(float(t)))

    def forward(self, x, class_labels=None):
        return self.unet(x, self.t, class_labels)


def make_net(spec: dict, in_shape, out_shape, label_dim: int = 0, t: float | None = None) -> nn.Module:
    """Every network from a params `net` spec. With a constant time input `t`, forward(x, class_labels=None)
    (the students' encoders and decoders); with t None, a denoiser forward(x, c_noise, class_labels=None)
    for EDM preconditioning (kdm.edm.EDMPrecond: the teachers)."""
    kind, args = spec["kind"], {k: v for k, v in spec.items() if k != "kind"}
    if kind == "mlp" and t is None:
        if len(in_shape) != 1 or label_dim:
            raise ValueError(f"teacher.net: an mlp teacher takes unconditional vector data, got shape {tuple(in_shape)}")
        return DenoiserMLP(in_shape[0], **args)
    if kind == "mlp":
        return MLPNet(in_shape, out_shape, label_dim=label_dim, t=t, **args)
    if kind in UNETS and t is None:
        return UNETS[kind](in_shape[1], in_shape[0], out_shape[0], label_dim=label_dim, **unet_args(args))
    if kind in UNETS:
        return UNetNet(in_shape, out_shape, t=t, kind=kind, label_dim=label_dim, **unet_args(args))
    raise ValueError(f"net.kind: unknown {kind!r}, expected mlp or one of {sorted(UNETS)}")


def unet_args(spec: dict) -> dict:
    """UNet keyword arguments from a params unet/songunet spec (YAML lists become tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k != "kind"}


class Discriminator(nn.Module):
    """The authors' small conv discriminator: stride-2 4x4 convs (3 -> 64 -> 128 -> 256 at CIFAR size),
    BatchNorm after the first, LeakyReLU 0.2. Widths come from params; the resolution halves per conv, so at
    8x8 three convs reach 1x1. The head: `linear`, one logit from the whole map; or `patch`, the authors' 4x4
    conv without padding, one logit per 4x4 window (one at 32x32, where it equals `linear`; 5x5 at 64x64)."""

    HEADS = ("linear", "patch")

    def __init__(self, in_channels: int, resolution: int, widths=(64, 128, 256), head: str = "linear"):
        super().__init__()
        if head not in self.HEADS:
            raise ValueError(f"adversary.head: unknown {head!r}, expected one of {self.HEADS}")
        layers, c, res = [], in_channels, resolution
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 4, stride=2, padding=1)] + ([nn.BatchNorm2d(w)] if i else [])
            layers.append(nn.LeakyReLU(0.2))
            c, res = w, res // 2
        if res < (4 if head == "patch" else 1):
            raise ValueError(f"discriminator: {len(widths)} stride-2 convs do not fit a {resolution}x{resolution} "
                             f"image with the {head} head; use fewer widths")
        out = [nn.Conv2d(c, 1, 4), nn.Flatten()] if head == "patch" else [nn.Flatten(), nn.Linear(c * res * res, 1)]
        self.body = nn.Sequential(*layers, *out)

    def forward(self, x):
        return self.body(x).squeeze(1)


class ImageClassifier(nn.Module):
    """A small CNN for low-resolution images in [-1, 1]; its penultimate layer is the feature space.

    Features are standardised per dimension with the real training images' statistics (`standardize`,
    buffers saved with the weights), so that FID and KID have a fixed scale whatever the training
    made of the layer's magnitude (KID's cubic kernel is meaningless on features of norm ~100).
    """

    def __init__(self, in_channels: int, resolution: int, n_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(2 * width * (resolution // 4) ** 2, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, n_classes)
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))

    @torch.no_grad()
    def standardize(self, real: torch.Tensor) -> None:
        f = self.body(real)
        self.feature_mean.copy_(f.mean(0))
        self.feature_std.copy_(f.std(0).clamp_min(1e-6))

    def features(self, x):
        return (self.body(x) - self.feature_mean) / self.feature_std

    def forward(self, x):
        return self.head(self.body(x))


def count_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())
