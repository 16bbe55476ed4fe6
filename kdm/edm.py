"""EDM (Karras et al. 2022): preconditioning, training loss and the deterministic Heun sampler."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kdm.nets import one_hot


class EDMPrecond(nn.Module):
    """D(x; s[, y]) = c_skip(s) x + c_out(s) F(c_in(s) x; c_noise(s)[, y]); y an integer class label,
    given to F one-hot (conditional teachers: label_dim > 0). `use_fp16` (an EDM pickle's): on a GPU, F runs
    in float16 (autocast) and the preconditioning in float32, as EDM runs such networks; the CPU stays float32."""

    def __init__(self, model: nn.Module, sigma_data: float, label_dim: int = 0, use_fp16: bool = False):
        super().__init__()
        self.model = model
        self.sigma_data, self.label_dim, self.use_fp16 = sigma_data, label_dim, use_fp16

    def forward(self, x, sigma, labels=None):
        sd = self.sigma_data
        sigma = sigma.to(torch.float32).reshape(-1, *([1] * (x.ndim - 1)))
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log().flatten() / 4
        x = x.to(torch.float32)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_fp16 and x.device.type == "cuda"):
            f = self.model(c_in * x, c_noise, one_hot(labels, self.label_dim))
        return c_skip * x + c_out * f.to(torch.float32)


def edm_loss(net: EDMPrecond, x0, generator: torch.Generator, P_mean: float, P_std: float, labels=None):
    """lambda(s) ||D(x0 + s n; s) - x0||^2 with ln s ~ N(P_mean, P_std^2), averaged over the batch."""
    shape = (x0.shape[0],) + (1,) * (x0.ndim - 1)
    sigma = (torch.randn(shape, generator=generator) * P_std + P_mean).exp().to(x0.device)
    sd = net.sigma_data
    weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
    noise = torch.randn(x0.shape, generator=generator).to(x0.device) * sigma
    return (weight * (net(x0 + noise, sigma, labels) - x0) ** 2).mean()


def sigma_steps(steps: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """s_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho for i < N, then s_N = 0 (float64)."""
    i = torch.arange(steps, dtype=torch.float64)
    t = (sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


def nfe(steps: int) -> int:
    """Heun with an Euler last step: two evaluations per step but one in the last."""
    return 2 * steps - 1


@torch.inference_mode()
def edm_sampler(denoise, x_T, steps: int, sigma_min: float, sigma_max: float, rho: float, labels=None):
    """Deterministic Heun sampler (EDM Algorithm 1 with S_churn = 0) from x_T = sigma_max * eps.

    `denoise(x, sigma, labels)` takes a float32 batch and a float32 sigma vector. The ODE state is carried in
    float64, as in EDM, so step arithmetic adds no error beyond the network's.
    """
    t = sigma_steps(steps, sigma_min, sigma_max, rho)
    x = x_T.to(torch.float64)
    ones = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)

    def slope(x, sigma):        # dx/dsigma = (x - D(x; sigma)) / sigma
        return (x - denoise(x.to(torch.float32), (sigma * ones).to(torch.float32), labels).to(torch.float64)) / sigma

    for i in range(steps):
        t_cur, t_next = t[i], t[i + 1]
        d = slope(x, t_cur)
        x_next = x + (t_next - t_cur) * d
        if i < steps - 1:
            x_next = x + (t_next - t_cur) * (0.5 * d + 0.5 * slope(x_next, t_next))
        x = x_next
    return x.to(torch.float32)


def seed_latents(seeds, shape, label_dim: int = 0) -> tuple[torch.Tensor, np.ndarray | None]:
    """EDM's generate.py, seed by seed: a generator seeded with the seed draws the standard normal noise and then,
    for a conditional model (label_dim > 0), the class label, uniform over label_dim. Each seed's noise and label are
    a pure function of that seed alone, and conditional pair s is EDM's image s."""
    noise = torch.empty((len(seeds),) + tuple(shape))
    labels = np.empty(len(seeds), np.int64) if label_dim else None
    g = torch.Generator()
    for i, s in enumerate(np.asarray(seeds).tolist()):
        g.manual_seed(s % (1 << 32))
        torch.randn(shape, generator=g, out=noise[i])
        if label_dim:
            labels[i] = torch.randint(label_dim, size=(), generator=g)
    return noise, labels

