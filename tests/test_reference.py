"""Image data by path (EDM's dataset_tool.py layout) and FID against reference statistics (kdm/metrics.py, the
reference stage), with random Inception weights (conftest.inception_weights)."""
import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from kdm import dag, metrics
from kdm.datasets import ImageFolder
from kdm.metrics import Images, to_uint8_rgb
from kdm.stages import reference
from kdm.metrics import Quality

SHAPE = (3, 32, 32)
N = 12


def pixels(n=N, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SHAPE[1], SHAPE[2], SHAPE[0]), dtype=np.uint8)


def png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="png")
    return buf.getvalue()


def write_dataset(root, kind: str, images: np.ndarray, labels=None):
    """As EDM's dataset_tool.py writes them: 00000/img00000000.png ..., dataset.json with [fname, label]."""
    files = {f"{i // 1000:05d}/img{i:08d}.png": png(x) for i, x in enumerate(images)}
    if labels is not None:
        files["dataset.json"] = json.dumps({"labels": [[f, int(y)] for f, y in zip(files, labels)]}).encode()
    if kind == "zip":
        with zipfile.ZipFile(root, "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
    else:
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
    return root


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_image_folder_reads_edm_layout_and_labels(tmp_path, kind):
    images, labels = pixels(), np.arange(N) % 10
    path = write_dataset(tmp_path / ("data.zip" if kind == "zip" else "data"), kind, images, labels)
    data = ImageFolder(path, 32, 3, classes=10)
    assert len(data) == N and data.shape == SHAPE and data.label_dim == 10
    assert torch.equal(to_uint8_rgb(data[3][None])[0], torch.from_numpy(images[3]).permute(2, 0, 1))
    x, y = data.sample(5, torch.Generator().manual_seed(0))
    assert x.shape == (5,) + SHAPE and y.dtype == torch.int64 and set(y.tolist()) <= set(range(10))
    with pytest.raises(ValueError, match=r"data.classes: 5, but .* labels 0..9; expected 0..4"):
        len(ImageFolder(path, 32, 3, classes=5))
    with pytest.raises(ValueError, match=r"data.resolution/channels: .*img00000000.png has shape \(3, 32, 32\), "
                                         r"expected \(3, 64, 64\)"):
        ImageFolder(path, 64, 3, classes=0)[0]


def test_image_folder_errors_name_the_param(tmp_path):
    missing = ImageFolder(tmp_path / "nope.zip", 32, 3, classes=0)
    assert missing.shape == SHAPE and missing.label_dim == 0      # known without the files
    with pytest.raises(FileNotFoundError, match=r"data.path: .*nope.zip does not exist"):
        len(missing)
    unlabelled = write_dataset(tmp_path / "data", "folder", pixels(3))
    with pytest.raises(ValueError, match="data.classes: 10, but .* has no dataset.json"):
        len(ImageFolder(unlabelled, 32, 3, classes=10))
    (tmp_path / "bad.zip").write_text("not a zip")
    with pytest.raises(ValueError, match="neither a folder nor a zip"):
        len(ImageFolder(tmp_path / "bad.zip", 32, 3, classes=0))


def test_frechet_distance_of_known_gaussians():
    d, shift = 8, np.arange(8.0)
    a = {"mu": np.zeros(d), "sigma": np.eye(d)}
    b = {"mu": shift, "sigma": 4 * np.eye(d)}
    # |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) = |shift|^2 + d (1 + 4 - 4)
    assert metrics.fid(a, b) == pytest.approx(shift @ shift + d)
    assert metrics.fid(b, b) == pytest.approx(0, abs=1e-9)


def run_reference(tmp_path, monkeypatch, data: dict, extractor: dict) -> dict:
    monkeypatch.chdir(tmp_path)
    stage = dag.reference("x")
    reference.run(stage, {"data": data, "extractor": extractor})
    return metrics.load_statistics(stage.outs.stats, "test")


def test_reference_stage_from_folder_zip_and_npz(tmp_path, monkeypatch, inception_weights):
    images = pixels()
    extractor = {"kind": "inception-v3-compat", "weights": inception_weights}
    stats = {}
    for kind, name in (("folder", "data"), ("zip", "data.zip")):
        path = write_dataset(tmp_path / name, kind, images)
        data = {"kind": "images", "path": str(path), "resolution": 32, "channels": 3, "classes": 0}
        stats[kind] = run_reference(tmp_path, monkeypatch, data, extractor)
    assert stats["folder"]["mu"].shape == (2048,) and stats["folder"]["sigma"].shape == (2048, 2048)
    direct = metrics.statistics(metrics.inception_features(
        torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1), inception_weights, batch=7)[metrics.FEATURES])
    for key in ("mu", "sigma"):     # the same images give the same statistics, also computed directly
        np.testing.assert_array_equal(stats["folder"][key], stats["zip"][key])
        np.testing.assert_allclose(stats["folder"][key], direct[key], rtol=1e-4, atol=1e-6)
    # an evaluation with Inception measures FID against these statistics: ~0 for the real images themselves
    params = {"x": {"data": data, "evaluate": {"extractor": extractor, "batch": 6}}}
    folder = ImageFolder(path, 32, 3, classes=0)
    quality = Quality(folder, params["x"]["evaluate"], dag.evaluate_teacher(params, "x").deps)
    got = quality(torch.stack([folder[i] for i in range(N)]), None)
    assert set(got) == {"fid", "isc", "isc_splits_std", "extractor"} and got["isc"] >= 1
    # the latent analysis's labels where Inception has no classes: k-means clusters of its pool features
    labels, features, described = quality.semantics(torch.stack([folder[i] for i in range(N)]), clusters=3, seed=0)
    assert features.shape == (N, 2048) and sorted(set(labels.tolist())) == [0, 1, 2] and "3 clusters" in described
    assert abs(got["fid"]) < 1e-3 * np.trace(stats["zip"]["sigma"])
    # a precomputed .npz (EDM's fid-refs layout) is checked and taken as it is; the data set is not read
    np.savez(tmp_path / "refs.npz", mu=stats["zip"]["mu"].astype(np.float32), sigma=stats["zip"]["sigma"])
    missing = {"kind": "images", "path": str(tmp_path / "absent"), "resolution": 32, "channels": 3, "classes": 0}
    got = run_reference(tmp_path, monkeypatch, missing, extractor | {"reference": str(tmp_path / "refs.npz")})
    np.testing.assert_allclose(got["mu"], stats["zip"]["mu"], rtol=1e-6)
    np.savez(tmp_path / "other.npz", mu=np.zeros(2048), sigma=np.zeros((2048, 64)))
    with pytest.raises(ValueError, match=r"evaluate.extractor.reference: .*other.npz holds .*expected mu of shape "
                                         r"\(2048,\) and sigma of shape \(2048, 2048\)"):
        run_reference(tmp_path, monkeypatch, missing, extractor | {"reference": str(tmp_path / "other.npz")})
    with pytest.raises(FileNotFoundError, match=r"evaluate.extractor.reference: .*nope.npz does not exist"):
        run_reference(tmp_path, monkeypatch, missing, extractor | {"reference": str(tmp_path / "nope.npz")})
    assert not list(tmp_path.glob("results/x/reference/.*tmp*")), "no partial output"


def test_fid_against_statistics_equals_torch_fidelity_fid(inception_weights):
    from torch_fidelity import calculate_metrics
    g = torch.Generator().manual_seed(0)
    a = torch.rand(6, *SHAPE, generator=g) * 2 - 1
    b = (torch.rand(6, *SHAPE, generator=g) * 2 - 1) * 0.5
    pool = [metrics.inception_features(x, inception_weights, batch=6)[metrics.FEATURES] for x in (a, b)]
    ours = metrics.fid(*map(metrics.statistics, pool))
    theirs = calculate_metrics(input1=Images(to_uint8_rgb(a)), input2=Images(to_uint8_rgb(b)),
                               feature_extractor="inception-v3-compat", feature_extractor_weights_path=inception_weights,
                               fid=True, cuda=False, cache=False, verbose=False, save_cpu_ram=True, batch_size=6)
    assert ours > 0 and ours == pytest.approx(theirs["frechet_inception_distance"], rel=1e-5)


def test_inception_score_equals_torch_fidelity_isc(inception_weights):
    """IS from Inception's logits, as the evaluation computes it beside FID: torch-fidelity's own isc."""
    from torch_fidelity import calculate_metrics
    a = torch.rand(20, *SHAPE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ours = metrics.inception_score(metrics.inception_features(a, inception_weights, 10, (metrics.LOGITS,))[metrics.LOGITS])
    theirs = calculate_metrics(input1=Images(to_uint8_rgb(a)), feature_extractor="inception-v3-compat",
                               feature_extractor_weights_path=inception_weights, isc=True, cuda=False, cache=False,
                               verbose=False, save_cpu_ram=True, batch_size=10)
    assert ours["isc"] >= 1 and ours["isc"] == pytest.approx(theirs["inception_score_mean"], rel=1e-6)
    assert ours["isc_splits_std"] == pytest.approx(theirs["inception_score_std"], rel=1e-6)
