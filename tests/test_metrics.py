"""torch-fidelity with the registered offline classifier extractor, on tiny real data (sklearn digits)."""
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from kdm.metrics import accuracy, fidelity_metrics, register_classifier
from kdm.models import build, save_model


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return torch.from_numpy(d.images).float().div(8).sub(1).unsqueeze(1), torch.from_numpy(d.target)


@pytest.fixture(scope="module")
def classifier_pt(digits, tmp_path_factory):
    """A classifier trained for a few seconds on 1,500 digits."""
    images, labels = digits
    kwargs = dict(in_channels=1, resolution=8, n_classes=10)
    net = build("classifier", kwargs, seed=0)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(1500, (128,), generator=g)
        loss = F.cross_entropy(net(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("clf") / "model.pt"
    save_model(path, "classifier", kwargs, net, data_shape=(1, 8, 8))
    return path


def test_classifier_learns_the_digits(classifier_pt, digits):
    from kdm.models import load_model
    images, labels = digits
    assert accuracy(load_model(classifier_pt), images[1500:], labels[1500:]) > 0.85


def test_registered_name_carries_the_weights_hash(classifier_pt, tmp_path):
    from kdm.io import sha256_file
    name = register_classifier(classifier_pt)
    assert name == f"kdm-classifier-{sha256_file(classifier_pt)[:16]}"
    assert register_classifier(classifier_pt) == name
    other = tmp_path / "other.pt"
    save_model(other, "classifier", dict(in_channels=1, resolution=8, n_classes=10),
               build("classifier", dict(in_channels=1, resolution=8, n_classes=10), seed=1), data_shape=(1, 8, 8))
    assert register_classifier(other) != name


def test_metrics_through_torch_fidelity(classifier_pt, digits):
    images, _ = digits
    name = register_classifier(classifier_pt)
    a, b = images[:600], images[600:1200]
    real = fidelity_metrics(a, b, name, kid_subset=300)
    noisy = fidelity_metrics(a + 0.8 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0)), b, name,
                             kid_subset=300)
    assert set(real) == {"fid", "kid", "precision", "recall", "isc", "isc_splits_std"}
    assert 0 <= real["fid"] < noisy["fid"] and real["kid"] < noisy["kid"]
    assert 8 < real["isc"] <= 10 and real["isc"] > noisy["isc"]       # 10 classes, confidently told apart
    assert real["precision"] > noisy["precision"] and real["recall"] > 0.5


def test_images_become_uint8_as_edm_writes_them():
    from kdm.images import to_uint8
    x = torch.tensor([-1.0, 0.0, 1.0, (100.7 - 128) / 127.5, (100.2 - 128) / 127.5, -3.0, 3.0])
    assert to_uint8(x).tolist() == [0, 128, 255, 100, 100, 0, 255]      # truncated, not rounded: 100.7 -> 100
    assert to_uint8(x.numpy()).dtype == torch.uint8
