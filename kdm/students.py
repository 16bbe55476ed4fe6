"""One-step students: the Koopman Distillation Model and the KD baseline (Luhman & Luhman 2021).

Both are built from a params `net` spec (kdm.nets.make_net): MLPs for 2-D data, UNets for images.
Class labels are integers (None when unconditional); the networks see them one-hot.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from kdm.koopman import make_operator
from kdm.nets import Discriminator, count_params, make_net, one_hot
from kdm.optim import adam, average_gradients, fuse, step


def rec_loss(spec: dict):
    """Reconstruction loss from params: l2 (MSE), pseudo-Huber sqrt(d^2 + c^2) - c (mean per element), or
    LPIPS (images; needs local backbone weights)."""
    if spec["kind"] == "l2":
        return F.mse_loss
    if spec["kind"] == "pseudo_huber":
        c = spec.get("c", 0.03)
        return lambda pred, target: ((pred - target) ** 2 + c * c).sqrt().sub(c).mean()
    if spec["kind"] == "lpips":
        return LPIPS(spec["net"], spec["weights"], spec.get("pooling", "max"))
    raise ValueError(f"rec_loss.kind: unknown {spec['kind']!r}")


class LPIPS:
    """LPIPS (Zhang et al. 2018), the authors' reconstruction loss: the lpips package's linear layers (shipped
    with the package) on a torchvision backbone whose ImageNet weights are read from a local file, never
    downloaded. Images below 32 pixels are upsampled (the backbone halves them four times); grey images
    are repeated to three channels. `pooling` avg replaces the backbone's max-pools by average pools of the
    same window, as the authors' LPIPS does (piq's LPIPS with replace_pooling=True)."""

    URLS = {"vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
            "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"}

    def __init__(self, backbone: str, weights, pooling: str = "max"):
        import lpips
        if pooling not in ("max", "avg"):
            raise ValueError(f"rec_loss.pooling: unknown {pooling!r}, expected max or avg")
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"rec_loss.weights: {path} does not exist. LPIPS needs torchvision's ImageNet {backbone} weights, "
                f"which this pipeline does not download: fetch {self.URLS[backbone]} on a machine with internet "
                f"and put it at {path}; or use rec_loss kind pseudo_huber.")
        self.model = lpips.LPIPS(net=backbone, pnet_rand=True, verbose=False)      # backbone: no download
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types for foreign files
            raise ValueError(f"rec_loss.weights: {path} is not a torch state dict ({type(e).__name__}: {e})") from None
        # lpips keeps torchvision's feature indices: slice2.5.weight is torchvision's features.5.weight
        names = {f"features.{k.split('.', 1)[1]}": k for k in self.model.net.state_dict()}
        missing = sorted(set(names) - set(state))
        if missing:
            raise ValueError(f"rec_loss.weights: {path} is not torchvision's {backbone} (lacks {missing[:3]})")
        self.model.net.load_state_dict({names[k]: state[k] for k in names})
        if pooling == "avg":
            for parent in self.model.net.modules():
                for name, child in parent.named_children():
                    if isinstance(child, nn.MaxPool2d):
                        setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
        self.model.eval().requires_grad_(False)

    def __call__(self, pred, target):
        self.model.to(pred.device)
        size = max(32, pred.shape[-1])

        def rgb(x):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False) if x.shape[-1] < size else x
            return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return self.model(rgb(pred), rgb(target)).mean()


def _projection(d_in: int, d_out: int) -> nn.Module:
    return nn.Identity() if d_in == d_out else nn.Linear(d_in, d_out)


class KoopmanStudent(nn.Module):
    """x_0 = D(C E_T(x_T) [+ B y]): encoders E_0, E_T into a latent where a linear operator C maps noise to data.

    With MLPs the latent is the encoders' `latent_dim` outputs. With UNets the encoders output
    `latent_channels` channels at the image's resolution; when that grid is larger than `latent_dim`, a
    linear projection follows each encoder and precedes the decoder (the authors' 64x64 models).
    E_T sees x_T / x_T_scale (x_T_scale = sigma_max: unit variance, so its first layer needs no special
    initialisation; 1: the raw x_T, as the authors' image models); the UNets' time inputs are constants (0
    for E_0 and D, 1 for E_T). `encoder_act` silu ends both encoders in a Swish, as the authors' 2-D
    encoders do (the latent then lies above -0.28 in every coordinate).
    """

    def __init__(self, data_shape, net: dict, latent_dim: int, x_T_scale: float, operator: dict | None = None,
                 label_dim: int = 0, latent_channels: int = 1, encoder_act: str = "none"):
        super().__init__()
        if encoder_act not in ("none", "silu"):
            raise ValueError(f"kdm.encoder_act: unknown {encoder_act!r}, expected none or silu")
        self.encoder_act = encoder_act      # a name, not a module: the state dict (and its metadata) stays as it was
        data_shape = tuple(data_shape)
        self.grid = (latent_channels,) + data_shape[1:] if net["kind"] != "mlp" else (latent_dim,)
        self.E0 = make_net(net, data_shape, self.grid, label_dim, t=0.0)
        self.ET = make_net(net, data_shape, self.grid, label_dim, t=1.0)
        self.D = make_net(net, self.grid, data_shape, label_dim, t=0.0)
        d = math.prod(self.grid)
        self.P0, self.PT, self.PD = _projection(d, latent_dim), _projection(d, latent_dim), _projection(latent_dim, d)
        self.C = make_operator(operator or {"kind": "dense"}, latent_dim)
        self.B = nn.Linear(label_dim, latent_dim, bias=False) if label_dim else None    # control term B y
        self.x_T_scale, self.label_dim = x_T_scale, label_dim

    def encode_0(self, x0, y):
        return self.P0(self._act(self.E0(x0, y)).flatten(1))

    def encode_T(self, x_T, y):
        return self.PT(self._act(self.ET(x_T / self.x_T_scale, y)).flatten(1))

    def _act(self, z):
        return F.silu(z) if self.encoder_act == "silu" else z

    def push(self, z, y):
        return self.C(z) if self.B is None else self.C(z) + self.B(y)

    def decode(self, z, y):
        return self.D(self.PD(z).reshape(-1, *self.grid), y)

    def latents(self, x_T, x0, labels=None) -> dict:
        """The Koopman latents of one-step sampling: z_T = E_T(x_T), its image C z_T (+ B y), and z_0 = E_0(x0)."""
        y = one_hot(labels, self.label_dim)
        zT = self.encode_T(x_T, y)
        return {"z_T": zT, "Cz_T": self.push(zT, y), "z_0": self.encode_0(x0, y)}

    def forward(self, x_T, labels=None):
        """One-step sampling: no latent noise, as in the authors' released code."""
        y = one_hot(labels, self.label_dim)
        return self.decode(self.push(self.encode_T(x_T, y), y), y)

    def losses(self, x0, x_T, generator: torch.Generator, latent_noise: float, rec, labels=None,
               adversary: "Adversary | None" = None) -> dict:
        y = one_hot(labels, self.label_dim)
        z0 = self.encode_0(x0, y)
        zT = self.encode_T(x_T, y)
        # drawn where the generator lives: the CPU's bytes on the CPU, no host copy with a GPU's generator
        z0_noisy = z0 + latent_noise * torch.randn(z0.shape, generator=generator, device=generator.device).to(z0.device)
        zT_noisy = zT + latent_noise * torch.randn(zT.shape, generator=generator, device=generator.device).to(zT.device)
        z0_pushed = self.push(zT_noisy, y)
        x0_pushed = self.decode(z0_pushed, y)
        terms = {"latent": F.mse_loss(z0_pushed, z0),          # z0 is not detached
                 "rec": rec(self.decode(z0_noisy, y), x0),
                 "push": rec(x0_pushed, x0),
                 **self.C.losses()}                              # decomposed C: inverse [+ eigen]
        if adversary is not None:
            terms.update(adversary.losses(x0, x0_pushed))
        return terms

    def sampling_params(self) -> int:
        return count_params(self.ET, self.PT, self.C, self.PD, self.D) + (count_params(self.B) if self.B else 0)


class OneStepStudent(nn.Module):
    """KD baseline: one network regressing x_0 from x_T (and the label, when conditional)."""

    def __init__(self, data_shape, net: dict, x_T_scale: float, label_dim: int = 0):
        super().__init__()
        self.net = make_net(net, tuple(data_shape), tuple(data_shape), label_dim, t=1.0)
        self.x_T_scale, self.label_dim = x_T_scale, label_dim

    def forward(self, x_T, labels=None):
        return self.net(x_T / self.x_T_scale, one_hot(labels, self.label_dim))

    def losses(self, x0, x_T, generator: torch.Generator, rec, labels=None, **_) -> dict:
        return {"rec": rec(self(x_T, labels), x0)}

    def sampling_params(self) -> int:
        return count_params(self)


class Adversary:
    """The adversarial term: a discriminator, stepped once per student step to tell the teacher's x_0
    (real) from the student's D(C z~_T) (fake); the student's term is BCE(Disc(fake), real).

    `losses` returns that term ("adv") and, for the log only, the discriminator's own loss ("disc", no
    gradient). Its module and optimiser state go into the student's checkpoints (`state_dict`).
    """

    def __init__(self, in_channels: int, resolution: int, widths, lr: float, betas, seed: int, head: str = "linear"):
        with torch.random.fork_rng(devices=[]):     # seeded, leaving the global RNG as it was
            torch.manual_seed(seed)
            self.disc = Discriminator(in_channels, resolution, tuple(widths), head)
        self.opt = adam(self.disc.parameters(), lr, betas)

    def to(self, *args, **kwargs):
        """Like Module.to: a device, or memory_format=torch.channels_last."""
        self.disc.to(*args, **kwargs)
        fuse(self.opt, next(self.disc.parameters()).device)
        return self

    @record_function("kdm:adversary")      # its own forward, backward and step, and the student's term's forward
    def losses(self, real, fake) -> dict:
        bce = F.binary_cross_entropy_with_logits
        d_real, d_fake = self.disc(real), self.disc(fake.detach())
        d_loss = bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(real.device.type, enabled=False):      # backward and step outside bf16 autocast
            d_loss.backward()
            average_gradients(self.disc.parameters())               # ranks keep the same discriminator
            step(self.opt, self.disc.parameters())
        self.disc.requires_grad_(False)         # the student's term: gradients for the student only
        g = self.disc(fake)
        self.disc.requires_grad_(True)
        return {"adv": bce(g, torch.ones_like(g)), "disc": d_loss.detach()}

    def state_dict(self) -> dict:
        return {"disc": self.disc.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.disc.load_state_dict(state["disc"])
        self.opt.load_state_dict(state["opt"])
