"""Data an experiment is about. Every draw takes an explicit torch.Generator.

`sample(n, generator)` returns (x, labels): labels are integer classes for a conditional experiment,
else None. `images` tells the stages which metrics and figures apply. Image data sets are also torch
Datasets of [-1, 1] float images (`real`), which the reference statistics are computed from.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

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


    def real(self) -> torch.Tensor:
        return self.x           # a tensor is a Dataset of its rows


class ImageFolder(torch.utils.data.Dataset):
    """Images given by path, as EDM's dataset_tool.py writes them: a folder (searched recursively) or a zip
    of image files, sorted by name, with optional labels in dataset.json ({"labels": [[fname, label], ...]},
    fname relative with '/'). Items are [-1, 1] float tensors (C, H, W). Nothing is read until images or
    labels are asked for, so stages that need only the shape run without the files."""

    images = True

    def __init__(self, path, resolution: int, channels: int, classes: int):
        self.path, self.shape, self.label_dim = Path(path), (channels, resolution, resolution), classes
        self._names = self._labels = self._zip = None

    @classmethod
    def from_params(cls, data: dict) -> "ImageFolder":
        return cls(data["path"], data["resolution"], data["channels"], data["classes"])

    def _open(self):
        if self._names is not None:
            return
        if not self.path.exists():
            raise FileNotFoundError(f"data.path: {self.path} does not exist; expected a folder or .zip of images "
                                    "as EDM's dataset_tool.py writes them")
        if self.path.is_dir():
            files = [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]
        else:
            try:
                self._zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile:
                raise ValueError(f"data.path: {self.path} is neither a folder nor a zip file") from None
            files = self._zip.namelist()
        from PIL import Image
        Image.init()
        self._names = sorted(f for f in files if Path(f).suffix.lower() in Image.EXTENSION)
        if not self._names:
            raise ValueError(f"data.path: {self.path} holds no image files")
        self._labels = self._read_labels(files)

    def _read(self, name: str) -> bytes:
        return self._zip.read(name) if self._zip else (self.path / name).read_bytes()

    def _read_labels(self, files) -> np.ndarray | None:
        if not self.label_dim:
            return None
        if "dataset.json" not in files:
            raise ValueError(f"data.classes: {self.label_dim}, but {self.path} has no dataset.json with labels")
        labels = dict(json.loads(self._read("dataset.json")).get("labels") or [])
        missing = [n for n in self._names if n not in labels]
        if missing:
            raise ValueError(f"data.path: {self.path}/dataset.json has no label for {missing[:3]}")
        y = np.array([labels[n] for n in self._names], np.int64)
        if y.min() < 0 or y.max() >= self.label_dim:
            raise ValueError(f"data.classes: {self.label_dim}, but {self.path}/dataset.json has labels "
                             f"{y.min()}..{y.max()}; expected 0..{self.label_dim - 1}")
        return y

    def __len__(self):
        self._open()
        return len(self._names)

    def __getitem__(self, i) -> torch.Tensor:
        from PIL import Image
        self._open()
        x = np.array(Image.open(io.BytesIO(self._read(self._names[i]))))
        x = x[:, :, None] if x.ndim == 2 else x
        x = torch.from_numpy(x).permute(2, 0, 1)
        if tuple(x.shape) != self.shape:
            raise ValueError(f"data.resolution/channels: {self.path}: {self._names[i]} has shape {tuple(x.shape)}, "
                             f"expected {self.shape}")
        return x.float().div(127.5).sub(1)

    def real(self) -> torch.utils.data.Dataset:
        return self

    def sample(self, n: int, generator: torch.Generator):
        """n images drawn with replacement, and their labels if the data set is class-conditional."""
        idx = torch.randint(len(self), (n,), generator=generator)
        x = torch.stack([self[int(i)] for i in idx])
        return x, (torch.from_numpy(self._labels[idx.numpy()]) if self.label_dim else None)


def make(data: dict):
    if data["kind"] == "checkerboard":
        return Checkerboard.from_params(data)
    if data["kind"] == "digits":
        return Digits.from_params(data)
    if data["kind"] == "images":
        return ImageFolder.from_params(data)
    raise ValueError(f"data.kind: unknown kind {data['kind']!r}")
