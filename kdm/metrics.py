"""Every quality metric, in the spirit of EDM's fid.py: feature extractors, feature statistics, and FID, KID,
precision and recall of samples against a reference; in-support precision, mode coverage and sliced W2
for 2-D data; and `Quality`, an experiment's metrics as params choose them.

Two feature extractors for images, chosen by params (`evaluate.extractor`):
- `classifier`: works offline. A small classifier trained on the experiment's real images (the
  classifier stage), registered with torch-fidelity under a name that carries the sha256 of its
  weights (torch-fidelity caches statistics by name, so a retrained classifier never reuses stale
  statistics; we also turn its cache off). FID, KID, precision and recall against the real images.
- `inception-v3-compat`: the standard FID network (the TF-Inception port FID is defined with), loaded
  from a local weights file; offline without it, a clear error says what to download and where to put
  it. FID against reference statistics, the EDM convention: the mean and covariance (mu, sigma) of the
  training set's 2048-d pool features, computed once (the reference stage) or taken from EDM's
  fid-refs .npz files, which hold the same two arrays. The distance is torch-fidelity's own, so FID
  against the statistics of a set equals torch-fidelity's FID against the set itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from kdm.device import device
from kdm.images import to_uint8
from kdm.io import atomic_path, read_json, sha256_file
from kdm.models import load_model

# torch-fidelity is imported inside the functions that use it: importing it costs about 1 s a process, which
# the 2-D evaluations and the classifier stage (accuracy only) do not need to pay

INCEPTION = "inception-v3-compat"
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
FEATURES = "2048"           # the Inception layer FID uses
LOGITS = "logits_unbiased"  # the one Inception Score uses (torch-fidelity's default for isc)
DIM = 2048


# ---- 2-D data ---------------------------------------------------------------------------------------
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


def border_distances(xT: np.ndarray, clusters: np.ndarray, outliers: np.ndarray) -> dict:
    """Where a 2-D student's outliers come from (the paper's claim: the borders between the noise regions that
    feed different modes). For each sample, the distance from its x_T to the nearest x_T of an inlier in another
    cluster (clusters of the generated x_0, as the analysis figure draws them); the median for outliers and for
    inliers, and their ratio (below 1: outliers sit nearer a border than inliers do)."""
    from sklearn.neighbors import NearestNeighbors
    distance = np.empty(len(xT))
    for c in np.unique(clusters):
        others = xT[(clusters != c) & ~outliers]
        mine = clusters == c
        distance[mine] = NearestNeighbors(n_neighbors=1).fit(others).kneighbors(xT[mine])[0][:, 0]
    median = lambda d: float(np.median(d)) if len(d) else None      # noqa: E731  (no outliers: none to place)
    out, inl = median(distance[outliers]), median(distance[~outliers])
    return {"border_dist_outliers": out, "border_dist_inliers": inl,
            "border_ratio": None if out is None or inl is None else out / inl}


# ---- images: extractors -----------------------------------------------------------------------------
class Images(Dataset):
    """Images (a tensor, or a Dataset too large for memory) as torch-fidelity reads them, one at a time,
    each through `as_read` when given (e.g. to_uint8_rgb for Inception)."""

    def __init__(self, images, as_read=None):
        self.images, self.as_read = images, as_read

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        return x if self.as_read is None else self.as_read(x[None])[0]


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images as the 0..255 uint8 RGB the Inception network expects (grey repeated), quantised as EDM writes images."""
    x = to_uint8(images)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def register_classifier(model_pt) -> str:
    """Register the classifier saved at `model_pt` (kdm.models.save_model) with torch-fidelity and
    return its name, `kdm-classifier-<sha256 prefix>`; registering the same weights again is a no-op."""
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    name = f"kdm-classifier-{sha256_file(model_pt)[:16]}"
    if name in FEATURE_EXTRACTORS_REGISTRY:
        return name

    class ClassifierFeatures(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.net = load_model(model_pt)

        @staticmethod
        def get_provided_features_list():
            return ("features", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "logits" if metric == "isc" else "features"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            raise NotImplementedError

        def forward(self, x):
            x = x.to(torch.float32)
            out = {"features": self.net.features(x), "logits": self.net(x)}
            return tuple(out[k] for k in self.features_list)      # the requested ones, in their order

    register_feature_extractor(name, ClassifierFeatures)
    return name


def resolve_extractor(spec: dict, classifier_pt) -> tuple[str, str | None]:
    """(torch-fidelity extractor name, weights path or None) for a params `evaluate.extractor` spec."""
    if spec["kind"] == "classifier":
        return register_classifier(classifier_pt), None
    weights = Path(spec["weights"])
    if not weights.is_file():
        raise FileNotFoundError(
            f"evaluate.extractor.weights: {weights} does not exist. The standard FID network ({INCEPTION}) is "
            f"not downloaded by this pipeline: on a machine with internet, fetch {INCEPTION_URL} and put it at "
            f"{weights}; or set evaluate.extractor.kind: classifier to use the offline digit classifier.")
    return INCEPTION, str(weights)


# ---- images: metrics against a reference ------------------------------------------------------------
def fidelity_metrics(generated: torch.Tensor, reference: torch.Tensor, extractor: str, weights: str | None = None,
                     kid_subset: int = 1000, prc_neighborhood: int = 3) -> dict:
    """FID, KID (mean), precision and recall of `generated` against `reference` images, and the Inception Score
    of `generated` (from the extractor's logits: the classifier's class logits, or Inception's; mean and std over
    torch-fidelity's 10 splits), no caching."""
    from torch_fidelity import calculate_metrics
    as_read = to_uint8_rgb if extractor == INCEPTION else None
    m = calculate_metrics(input1=Images(generated, as_read), input2=Images(reference, as_read), feature_extractor=extractor,
                          feature_extractor_weights_path=weights, fid=True, kid=True, prc=True, isc=True,
                          cuda=device().type == "cuda", cache=False, verbose=False, save_cpu_ram=True,
                          kid_subset_size=min(kid_subset, len(generated), len(reference)),
                          prc_neighborhood=prc_neighborhood)
    return {"fid": m["frechet_inception_distance"], "kid": m["kernel_inception_distance_mean"],
            "precision": m["precision"], "recall": m["recall"], "isc": m["inception_score_mean"],
            "isc_splits_std": m["inception_score_std"]}


def accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.inference_mode():
        return float((classifier(images).argmax(1) == labels).float().mean())


def inception_features(images, weights: str, batch: int, layers=(FEATURES,)) -> dict[str, torch.Tensor]:
    """Inception's float32 features of a Dataset (or tensor) of [-1, 1] float images, by layer: (n, 2048) pool
    features (FEATURES), (n, 1008) logits (LOGITS)."""
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset
    cuda = device().type == "cuda"
    net = create_feature_extractor(INCEPTION, list(layers), cuda=cuda, feature_extractor_weights_path=weights,
                                   verbose=False)
    return get_featuresdict_from_dataset(Images(images, to_uint8_rgb), net, batch, cuda, save_cpu_ram=True,
                                         verbose=False)


def inception_score(logits: torch.Tensor) -> dict:
    """Inception Score of (n, classes) logits, torch-fidelity's computation (10 splits of a seeded shuffle): its
    mean and std over the splits."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
    m = isc_features_to_metric(logits)
    return {"isc": m[KEY_METRIC_ISC_MEAN], "isc_splits_std": m[KEY_METRIC_ISC_STD]}


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


# ---- an experiment's metrics ------------------------------------------------------------------------
class Quality:
    """The experiment's quality metrics for a batch of samples (and the labels they were asked for).
    `evaluator`: the evaluation stage's files that its metrics read, by name (kdm.dag.evaluator_deps): the
    classifier and its metrics, or the reference statistics; none for 2-D data."""

    def __init__(self, data, ev: dict, evaluator):
        self.data, self.ev = data, ev
        self.classifier = self.reference = None
        if not data.images:
            return
        if ev["extractor"]["kind"] == "classifier":
            self.classifier = load_model(evaluator.classifier)
            self.extractor, self.weights = resolve_extractor(ev["extractor"], evaluator.classifier)
            self.heldout_accuracy = read_json(evaluator.classifier_metrics)["heldout_accuracy"]
            self.described = f"{self.extractor} (held-out acc {self.heldout_accuracy:.3f})"
        else:
            self.extractor, self.weights = resolve_extractor(ev["extractor"], None)
            self.reference = load_statistics(evaluator.reference, "the reference stage's output")
            self.described = f"{self.extractor} (FID against reference statistics)"

    def __call__(self, x0: torch.Tensor, labels: torch.Tensor | None) -> dict:
        if not self.data.images:
            return self.points(x0)
        return self.frechet(x0) if self.classifier is None else self.images(x0, labels, self.data.x)

    def points(self, x0) -> dict:
        gen = torch.Generator().manual_seed(self.ev["metric_seed"])
        true, _ = self.data.sample(len(x0), gen)
        cells = self.data.cell_of(x0)
        return {"precision": in_support_precision(cells), "coverage": mode_coverage(cells, self.data.n_modes),
                "sw2": sliced_w2(x0, true, self.ev["sw2_projections"], gen)}

    def images(self, x0, labels, reference) -> dict:
        out = fidelity_metrics(x0, reference, self.extractor, self.weights, kid_subset=self.ev["kid_subset"],
                               prc_neighborhood=self.ev["prc_neighborhood"])
        if labels is not None:
            out["class_acc"] = accuracy(self.classifier, x0, labels)
        return {**out, "extractor": self.described}

    def semantics(self, x0: torch.Tensor, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
        """What the evaluator says the samples are, for the latent analysis: (labels, features, what the labels
        are). 2-D: the board cell of each sample, and the sample itself; the classifier: its predicted digit and
        its features; Inception: k-means clusters of its pool features (`clusters`, `seed`), and those."""
        if not self.data.images:
            return self.data.cell_of(x0).numpy(), x0.numpy(), "the board cell of the sample"
        if self.classifier is not None:
            with torch.inference_mode():
                return (self.classifier(x0).argmax(1).numpy(), self.classifier.features(x0).numpy(),
                        "the digit classifier's prediction")
        from sklearn.cluster import KMeans
        features = inception_features(x0, self.weights, self.ev["batch"])[FEATURES].numpy()
        labels = KMeans(n_clusters=clusters, n_init=4, random_state=seed).fit_predict(features)
        return labels, features, f"k-means ({clusters} clusters) of the samples' Inception features"

    def frechet(self, x0) -> dict:
        features = inception_features(x0, self.weights, self.ev["batch"], (FEATURES, LOGITS))
        return {"fid": fid(statistics(features[FEATURES]), self.reference), **inception_score(features[LOGITS]),
                "extractor": self.described}
