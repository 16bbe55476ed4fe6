"""Frechet Inception Distance against reference statistics, the EDM convention: the mean and covariance
(mu, sigma) of the training set's 2048-d Inception pool features are computed once (or taken from EDM's
fid-refs .npz files, which hold the same two arrays), and every model's samples are compared with them.

Features come from torch-fidelity's `inception-v3-compat` (the TF-Inception port FID is defined with) loaded
from a local weights file; the distance is torch-fidelity's own, so FID against the statistics of a set
equals torch-fidelity's FID against the set itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from kdm.fidelity import INCEPTION, to_uint8_rgb
from kdm.io import atomic_path

FEATURES = "2048"           # the Inception layer FID uses
DIM = 2048


class _Uint8RGB(Dataset):
    """[-1, 1] float images as the uint8 RGB the Inception network reads, one at a time (the data set may not fit
    in memory)."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return to_uint8_rgb(self.images[i][None])[0]


def inception_features(images, weights: str, batch: int) -> torch.Tensor:
    """(n, 2048) float32 features of a Dataset (or tensor) of [-1, 1] float images."""
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    from kdm.training import device
    cuda = device().type == "cuda"
    net = create_feature_extractor(INCEPTION, [FEATURES], cuda=cuda, feature_extractor_weights_path=weights,
                                   verbose=False)
    return get_featuresdict_from_dataset(_Uint8RGB(images), net, batch, cuda, save_cpu_ram=True,
                                         verbose=False)[FEATURES]


def statistics(features: torch.Tensor) -> dict:
    """mu and sigma (float64, as EDM stores them) of (n, d) features."""
    f = features.double().numpy()
    return {"mu": f.mean(0), "sigma": np.cov(f, rowvar=False)}


def save_statistics(path, stats: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, mu=stats["mu"], sigma=stats["sigma"])


def load_statistics(path, where: str) -> dict:
    """Statistics from an .npz with `mu` (2048,) and `sigma` (2048, 2048); `where` names the param or stage
    output the file came from, for errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: {path} does not exist; expected an .npz of Inception statistics "
                                f"(mu, sigma), e.g. EDM's fid-refs/cifar10-32x32.npz")
    try:
        with np.load(path, allow_pickle=False) as npz:
            stats = {k: npz[k] for k in npz.files}
    except Exception as e:      # zip, EOF and header errors alike mean a corrupt or foreign file
        raise ValueError(f"{where}: {path} is not a readable .npz file ({type(e).__name__}: {e})") from None
    shapes = {k: v.shape for k, v in stats.items()}
    if shapes.get("mu") != (DIM,) or shapes.get("sigma") != (DIM, DIM):
        raise ValueError(f"{where}: {path} holds {shapes}; expected mu of shape ({DIM},) and sigma of shape "
                         f"({DIM}, {DIM}) (Inception pool features)")
    if not all(np.isfinite(v).all() for v in stats.values()):
        raise ValueError(f"{where}: {path} holds non-finite values")
    return {"mu": stats["mu"].astype(np.float64), "sigma": stats["sigma"].astype(np.float64)}


def fid(generated: dict, reference: dict) -> float:
    """FID between two sets of statistics (torch-fidelity's computation)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
    return fid_statistics_to_metric(generated, reference, verbose=False)[KEY_METRIC_FID]
