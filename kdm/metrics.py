"""Sample-quality metrics for 2-D data and the speed measurement shared by every model."""
from __future__ import annotations

import time

import numpy as np
import torch


def in_support_precision(cells: torch.Tensor) -> float:
    """Share of samples inside a data cell (`cells` from Checkerboard.cell_of, -1 = outside)."""
    return float((cells >= 0).float().mean())


def mode_coverage(cells: torch.Tensor, n_modes: int, min_share: float = 0.01) -> float:
    """Share of the data cells that receive at least `min_share` of the samples."""
    counts = torch.bincount(cells[cells >= 0], minlength=n_modes).float()
    return float((counts >= min_share * len(cells)).float().mean())


def sliced_w2(x: torch.Tensor, y: torch.Tensor, projections: int, generator: torch.Generator) -> float:
    """Sliced Wasserstein-2 between equal-size samples: sqrt of the mean over random unit directions of
    the squared W2 between the 1-D projections (sorted matching)."""
    if len(x) != len(y):
        raise ValueError(f"sliced_w2 needs equal sample sizes, got {len(x)} and {len(y)}")
    d = torch.randn(x.shape[1], projections, generator=generator, dtype=torch.float64)
    d /= d.norm(dim=0, keepdim=True)
    px = (x.to(torch.float64) @ d).sort(dim=0).values
    py = (y.to(torch.float64) @ d).sort(dim=0).values
    return float(((px - py) ** 2).mean().sqrt())


def clusters_and_outliers(x: np.ndarray, k: int, seed: int, eps: float = 0.15, min_samples: int = 5):
    """KMeans(k) labels of x, and outliers as in the paper: DBSCAN noise points or any |z-score| > 3."""
    from sklearn.cluster import DBSCAN, KMeans
    labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)
    noise = DBSCAN(eps=eps, min_samples=min_samples).fit(x).labels_ == -1
    z = np.abs((x - x.mean(0)) / x.std(0))
    return labels, noise | (z > 3).any(1)


@torch.inference_mode()
def ms_per_sample(sample_fn, x_T: torch.Tensor, repeats: int) -> float:
    """Median wall time of sample_fn(x_T) over `repeats` calls after one warm-up, per sample, in ms
    (on a GPU, until its work has finished)."""
    sync = torch.cuda.synchronize if x_T.is_cuda else (lambda: None)
    sample_fn(x_T)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        sample_fn(x_T)
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3 / len(x_T)
