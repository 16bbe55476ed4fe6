"""Image metrics through torch-fidelity (FID, KID, precision, recall).

Two feature extractors, chosen by params (`evaluate.extractor`):
- `classifier`: works offline. A small classifier trained on the experiment's real images (the
  classifier stage), registered with torch-fidelity under a name that carries the sha256 of its
  weights (torch-fidelity caches statistics by name, so a retrained classifier never reuses stale
  statistics; we also turn its cache off).
- `inception-v3-compat`: the standard FID network, loaded from a local weights file; offline without
  it, a clear error says what to download and where to put it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset


class ImageClassifier(nn.Module):
    """A small CNN for low-resolution images in [-1, 1]; its penultimate layer is the feature space.

    Features are standardised per dimension with the real training images' statistics (`standardize`,
    buffers saved with the weights), so that FID and KID have a fixed scale whatever the training
    made of the layer's magnitude (KID's cubic kernel is meaningless on features of norm ~100).
    """

    def __init__(self, in_channels: int, resolution: int, n_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(2 * width * (resolution // 4) ** 2, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, n_classes)
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))

    @torch.no_grad()
    def standardize(self, real: torch.Tensor) -> None:
        f = self.body(real)
        self.feature_mean.copy_(f.mean(0))
        self.feature_std.copy_(f.std(0).clamp_min(1e-6))

    def features(self, x):
        return (self.body(x) - self.feature_mean) / self.feature_std

    def forward(self, x):
        return self.head(self.body(x))


class Images(Dataset):
    """A float tensor of images as the Dataset torch-fidelity iterates over."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def register_classifier(model_pt) -> str:
    """Register the classifier saved at `model_pt` (kdm.training.save_model) with torch-fidelity and
    return its name, `kdm-classifier-<sha256 prefix>`; registering the same weights again is a no-op."""
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from kdm.io import sha256_file
    from kdm.training import load_model

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


INCEPTION = "inception-v3-compat"
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")


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


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images as the 0..255 uint8 RGB the Inception network expects (grey repeated)."""
    x = ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def fidelity_metrics(generated: torch.Tensor, reference: torch.Tensor, extractor: str, weights: str | None = None,
                     kid_subset: int = 1000, prc_neighborhood: int = 3) -> dict:
    """FID, KID (mean), precision and recall of `generated` against `reference` images, no caching."""
    from torch_fidelity import calculate_metrics

    from kdm.training import device
    if extractor == INCEPTION:
        generated, reference = to_uint8_rgb(generated), to_uint8_rgb(reference)
    m = calculate_metrics(input1=Images(generated), input2=Images(reference), feature_extractor=extractor,
                          feature_extractor_weights_path=weights, fid=True, kid=True, prc=True,
                          cuda=device().type == "cuda", cache=False, verbose=False, save_cpu_ram=True,
                          kid_subset_size=min(kid_subset, len(generated), len(reference)),
                          prc_neighborhood=prc_neighborhood)
    return {"fid": m["frechet_inception_distance"], "kid": m["kernel_inception_distance_mean"],
            "precision": m["precision"], "recall": m["recall"]}


def accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.inference_mode():
        return float((classifier(images).argmax(1) == labels).float().mean())
