"""Koopman operators: the linear map C on the flattened latent.

- `DenseOperator`: C = an affine nn.Linear(d, d), as in the authors' main models.
- `DecomposedOperator`: C = P diag(lambda) Q + b with complex P, Q (Q learned separately as P^-1) and
  eigenvalues lambda = exp(-exp(nu)) exp(i exp(theta)), so |lambda| lies in (0, 1]. The latent's two
  halves are the real and imaginary parts, so C is realised as a real block matrix. Extra losses:
  inverse consistency MSE(QP, I) + MSE(PQ, I), and optionally pulling the eigenvalues towards a fixed
  random target or towards the unit circle.
"""
from __future__ import annotations

import torch
from torch import nn


class DenseOperator(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, z):
        return self.linear(z)

    def matrix(self) -> torch.Tensor:
        return self.linear.weight

    def losses(self) -> dict:
        return {}


def _cmul(ar, ai, br, bi):
    """(ar + i ai) @ (br + i bi) on real tensors."""
    return ar @ br - ai @ bi, ar @ bi + ai @ br


class DecomposedOperator(nn.Module):
    """C acting on z = (x, y) in R^2k as the complex vector x + i y in C^k: C z = P diag(lambda) Q z + b.

    As a real map this is the 2k x 2k block matrix [[Re M, -Im M], [Im M, Re M]] with M = P diag(lambda) Q;
    with Q = P^-1 its eigenvalues are the lambdas and their conjugates.
    """

    def __init__(self, dim: int, eigen_loss: str = "none"):
        super().__init__()
        if dim % 2:
            raise ValueError(f"a decomposed operator needs an even latent dimension, got {dim}")
        k = dim // 2
        eye = torch.eye(k)
        noise = lambda: torch.randn(k, k) / k ** 0.5 * 0.1
        self.P_re, self.P_im = nn.Parameter(eye + noise()), nn.Parameter(noise())
        self.Q_re, self.Q_im = nn.Parameter(eye + noise()), nn.Parameter(noise())
        # |lambda| = exp(-exp(nu)) starts near 0.9; angles exp(theta) spread over (0, pi)
        self.nu = nn.Parameter(torch.full((k,), -2.25) + 0.1 * torch.randn(k))
        self.theta = nn.Parameter(torch.log(torch.rand(k) * torch.pi + 1e-3))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eigen_loss = eigen_loss
        if eigen_loss == "target":
            r, phase = torch.rand(k).sqrt(), torch.rand(k) * 2 * torch.pi
            self.register_buffer("target_re", r * phase.cos())
            self.register_buffer("target_im", r * phase.sin())

    def eigenvalues(self):
        modulus, angle = torch.exp(-torch.exp(self.nu)), torch.exp(self.theta)
        return modulus * angle.cos(), modulus * angle.sin()

    def forward(self, z):
        k = len(self.nu)
        x, y = z[:, :k], z[:, k:]
        u_re, u_im = _cmul(x, y, self.Q_re.T, self.Q_im.T)                      # Q z
        lam_re, lam_im = self.eigenvalues()
        v_re, v_im = lam_re * u_re - lam_im * u_im, lam_re * u_im + lam_im * u_re
        w_re, w_im = _cmul(v_re, v_im, self.P_re.T, self.P_im.T)                 # P v
        return torch.cat([w_re, w_im], dim=1) + self.bias

    def matrix(self) -> torch.Tensor:
        """The real 2k x 2k matrix this operator applies."""
        lam_re, lam_im = self.eigenvalues()
        PL_re, PL_im = self.P_re * lam_re - self.P_im * lam_im, self.P_re * lam_im + self.P_im * lam_re
        M_re, M_im = _cmul(PL_re, PL_im, self.Q_re, self.Q_im)
        return torch.cat([torch.cat([M_re, -M_im], dim=1), torch.cat([M_im, M_re], dim=1)], dim=0)

    def losses(self) -> dict:
        eye = torch.eye(len(self.nu), device=self.nu.device)
        qp_re, qp_im = _cmul(self.Q_re, self.Q_im, self.P_re, self.P_im)
        pq_re, pq_im = _cmul(self.P_re, self.P_im, self.Q_re, self.Q_im)
        out = {"inverse": ((qp_re - eye) ** 2 + qp_im ** 2).mean() + ((pq_re - eye) ** 2 + pq_im ** 2).mean()}
        lam_re, lam_im = self.eigenvalues()
        if self.eigen_loss == "target":
            out["eigen"] = ((lam_re - self.target_re) ** 2 + (lam_im - self.target_im) ** 2).mean()
        elif self.eigen_loss == "unit_circle":
            out["eigen"] = (((lam_re ** 2 + lam_im ** 2).sqrt() - 1) ** 2).mean()
        return out


def make_operator(spec: dict, dim: int) -> nn.Module:
    if spec["kind"] == "dense":
        return DenseOperator(dim)
    return DecomposedOperator(dim, spec.get("eigen_loss", "none"))
