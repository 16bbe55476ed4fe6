"""One-step students: the Koopman Distillation Model and the KD baseline (Luhman & Luhman 2021)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdm.koopman import make_operator
from kdm.nets import count_params, mlp


def rec_loss(spec: dict):
    """Reconstruction loss from params: l2 (MSE) or pseudo-Huber sqrt(d^2 + c^2) - c (mean per element)."""
    if spec["kind"] == "l2":
        return F.mse_loss
    if spec["kind"] == "pseudo_huber":
        c = spec.get("c", 0.03)
        return lambda pred, target: ((pred - target) ** 2 + c * c).sqrt().sub(c).mean()
    raise ValueError(f"rec_loss.kind: unknown {spec['kind']!r}")


class KoopmanStudent(nn.Module):
    """x_0 = D(C E_T(x_T)): encoders E_0, E_T into a latent where a linear operator C maps noise to data.

    E_T sees x_T / x_T_scale (unit variance) so its first layer needs no special initialisation.
    """

    def __init__(self, dim: int, hidden: int, layers: int, latent_dim: int, x_T_scale: float,
                 operator: dict | None = None):
        super().__init__()
        self.E0 = mlp(dim, latent_dim, hidden, layers)
        self.ET = mlp(dim, latent_dim, hidden, layers)
        self.D = mlp(latent_dim, dim, hidden, layers)
        self.C = make_operator(operator or {"kind": "dense"}, latent_dim)
        self.x_T_scale = x_T_scale

    def forward(self, x_T):
        """One-step sampling: no latent noise, as in the authors' released code."""
        return self.D(self.C(self.ET(x_T / self.x_T_scale)))

    def losses(self, x0, x_T, generator: torch.Generator, latent_noise: float, rec) -> dict:
        z0 = self.E0(x0)
        zT = self.ET(x_T / self.x_T_scale)
        z0_noisy = z0 + latent_noise * torch.randn(z0.shape, generator=generator)
        zT_noisy = zT + latent_noise * torch.randn(zT.shape, generator=generator)
        z0_pushed = self.C(zT_noisy)
        return {"latent": F.mse_loss(z0_pushed, z0),          # z0 is not detached
                "rec": rec(self.D(z0_noisy), x0),
                "push": rec(self.D(z0_pushed), x0),
                **self.C.losses()}                              # decomposed C: inverse [+ eigen]

    def sampling_params(self) -> int:
        return count_params(self.ET, self.C, self.D)


class OneStepStudent(nn.Module):
    """KD baseline: one network regressing x_0 from x_T."""

    def __init__(self, dim: int, hidden: int, layers: int, x_T_scale: float):
        super().__init__()
        self.net = mlp(dim, dim, hidden, layers)
        self.x_T_scale = x_T_scale

    def forward(self, x_T):
        return self.net(x_T / self.x_T_scale)

    def losses(self, x0, x_T, generator: torch.Generator, rec, **_) -> dict:
        return {"rec": rec(self(x_T), x0)}

    def sampling_params(self) -> int:
        return count_params(self)
