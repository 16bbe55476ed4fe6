"""Data an experiment is about. Every draw takes an explicit torch.Generator.

`sample(n, generator)` returns (x, labels): labels are integer classes for a conditional experiment,
else None. `images` tells the stages which metrics, figures and extra stages (classifier, real-data
floor) apply.
"""
from __future__ import annotations

import numpy as np
import torch


class Checkerboard:
    """Uniform density on the cells (row + col even) of a cells x cells board over [-h, h]^2."""

    def __init__(self, cells: int, half_width: float):
        self.cells, self.h = cells, half_width
        self.width = 2 * half_width / cells
        ij = torch.cartesian_prod(torch.arange(cells), torch.arange(cells))
        self.filled = ij[(ij.sum(1) % 2) == 0]          # (n_modes, 2) cell indices (col, row)
        self.shape = (2,)
        self.label_dim = 0

    @classmethod
    def from_params(cls, data: dict) -> "Checkerboard":
        return cls(data["cells"], data["half_width"])

    @property
    def n_modes(self) -> int:
        return len(self.filled)

    images = False

    def sample(self, n: int, generator: torch.Generator):
        cell = self.filled[torch.randint(self.n_modes, (n,), generator=generator)]
        u = torch.rand(n, 2, generator=generator)
        return -self.h + (cell + u) * self.width, None

    def cell_of(self, x: torch.Tensor) -> torch.Tensor:
        """Index into `filled` of the data cell holding each point, or -1 outside every data cell."""
        ij = torch.floor((x + self.h) / self.width).long()
        inside = ((ij >= 0) & (ij < self.cells)).all(1) & ((ij.sum(1) % 2) == 0)
        code = ij[:, 0] * self.cells + ij[:, 1]
        lookup = torch.full((self.cells * self.cells,), -1, dtype=torch.long)
        lookup[self.filled[:, 0] * self.cells + self.filled[:, 1]] = torch.arange(self.n_modes)
        return torch.where(inside, lookup[code.clamp(0, self.cells ** 2 - 1)], torch.tensor(-1))


class Digits:
    """scikit-learn's 8x8 digits (1,797 real images shipped with the package, 10 classes), pixel values
    0..16 scaled to [-1, 1], shape (1, 8, 8). The generative models and the FID reference use every image;
    the evaluator's classifier holds out a seeded share (`split`) to report its accuracy."""

    images = True

    def __init__(self, conditional: bool):
        from sklearn.datasets import load_digits
        d = load_digits()
        self.x = torch.from_numpy(d.images).float().div(8).sub(1).unsqueeze(1)
        self.y = torch.from_numpy(d.target).long()
        self.shape, self.n_classes = tuple(self.x.shape[1:]), 10
        self.label_dim = self.n_classes if conditional else 0

    @classmethod
    def from_params(cls, data: dict) -> "Digits":
        return cls(data["conditional"])

    def split(self, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, held-out) indices: a seeded random share `holdout` of the images is held out."""
        perm = np.random.default_rng(seed).permutation(len(self.x))
        n_out = int(round(holdout * len(self.x)))
        return np.sort(perm[n_out:]), np.sort(perm[:n_out])

    def sample(self, n: int, generator: torch.Generator):
        """n images drawn with replacement, and their labels if the experiment is conditional."""
        idx = torch.randint(len(self.x), (n,), generator=generator)
        return self.x[idx], (self.y[idx] if self.label_dim else None)


def make(data: dict):
    if data["kind"] == "checkerboard":
        return Checkerboard.from_params(data)
    if data["kind"] == "digits":
        return Digits.from_params(data)
    raise ValueError(f"data.kind: unknown kind {data['kind']!r}")
