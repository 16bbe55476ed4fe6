"""Image metrics through torch-fidelity (FID, KID, precision, recall) with a feature extractor that
works offline: a small classifier (to be trained on an image experiment's own data), registered with
torch-fidelity under a name that carries the sha256 of its weights (torch-fidelity caches statistics
by name, so a retrained classifier can never reuse stale statistics).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset


class ImageClassifier(nn.Module):
    """A small CNN for low-resolution images in [-1, 1]; its penultimate layer is the feature space."""

    def __init__(self, in_channels: int, resolution: int, n_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(2 * width * (resolution // 4) ** 2, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


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
            f = self.net.features(x.to(torch.float32))
            out = {"features": f, "logits": self.net.head(f)}
            return tuple(out[k] for k in self.features_list)      # the requested ones, in their order

    register_feature_extractor(name, ClassifierFeatures)
    return name


def fidelity_metrics(generated: torch.Tensor, reference: torch.Tensor, extractor: str, kid_subset: int = 1000,
                     prc_neighborhood: int = 3) -> dict:
    """FID, KID (mean), precision and recall of `generated` against `reference` images, no caching."""
    from torch_fidelity import calculate_metrics
    m = calculate_metrics(input1=Images(generated), input2=Images(reference), feature_extractor=extractor,
                          fid=True, kid=True, prc=True, cuda=generated.is_cuda, cache=False, verbose=False,
                          save_cpu_ram=True, kid_subset_size=min(kid_subset, len(generated), len(reference)),
                          prc_neighborhood=prc_neighborhood)
    return {"fid": m["frechet_inception_distance"], "kid": m["kernel_inception_distance_mean"],
            "precision": m["precision"], "recall": m["recall"]}


def accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.inference_mode():
        return float((classifier(images).argmax(1) == labels).float().mean())
