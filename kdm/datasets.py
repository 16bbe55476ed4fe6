"""Data an experiment is about. Every draw takes an explicit torch.Generator."""
from __future__ import annotations

import torch


class Checkerboard:
    """Uniform density on the cells (row + col even) of a cells x cells board over [-h, h]^2."""

    def __init__(self, cells: int, half_width: float):
        self.cells, self.h = cells, half_width
        self.width = 2 * half_width / cells
        ij = torch.cartesian_prod(torch.arange(cells), torch.arange(cells))
        self.filled = ij[(ij.sum(1) % 2) == 0]          # (n_modes, 2) cell indices (col, row)
        self.shape = (2,)

    @classmethod
    def from_params(cls, data: dict) -> "Checkerboard":
        return cls(data["cells"], data["half_width"])

    @property
    def n_modes(self) -> int:
        return len(self.filled)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        cell = self.filled[torch.randint(self.n_modes, (n,), generator=generator)]
        u = torch.rand(n, 2, generator=generator)
        return -self.h + (cell + u) * self.width

    def cell_of(self, x: torch.Tensor) -> torch.Tensor:
        """Index into `filled` of the data cell holding each point, or -1 outside every data cell."""
        ij = torch.floor((x + self.h) / self.width).long()
        inside = ((ij >= 0) & (ij < self.cells)).all(1) & ((ij.sum(1) % 2) == 0)
        code = ij[:, 0] * self.cells + ij[:, 1]
        lookup = torch.full((self.cells * self.cells,), -1, dtype=torch.long)
        lookup[self.filled[:, 0] * self.cells + self.filled[:, 1]] = torch.arange(self.n_modes)
        return torch.where(inside, lookup[code.clamp(0, self.cells ** 2 - 1)], torch.tensor(-1))


def make(data: dict):
    if data["kind"] == "checkerboard":
        return Checkerboard.from_params(data)
    raise ValueError(f"data.kind: unknown kind {data['kind']!r}")
