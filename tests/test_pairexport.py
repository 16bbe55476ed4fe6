"""Exporting a store (`python -m kdm export-pairs`, kdm/pairexport.py) as GET's chunks, the KDM authors' npz files and
EDM's PNG folder. Each export is read the way the publishers' loaders read it (GET datasets.py: listdir sorted by
number, torch.load, cat; KDM datasets_objects.py: glob, np.load, x_0 = [0] and x_T = [-1]; EDM: dataset.json and
PIL), get and kdm import back (kdm/pairimport.py) to the store's bytes, and bad input or a disk that fills midway
leave nothing behind."""
import errno
import json
import os
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from kdm import dag, pairexport
from kdm.__main__ import main
from kdm.edm import seed_latents
from kdm.pairexport import export_pairs
from kdm.pairimport import import_pairs
from kdm.pairset import PairSetError, open_pairset, write_pairset

from conftest import tiny_digits

SIGMA_MAX, START, N, LABEL_DIM = 80, 7, 60, 10
EXP = "digits-cond"


def make_store(path, cond: bool):
    """A store as the pairs stage writes one (kdm.sampling.sample: x_T = sigma_max * eps and the labels, per seed),
    its x_0 images in [-1, 1] that stray a little outside, as a sampler's do; RGB if conditional, else greyscale."""
    shape = (3, 8, 8) if cond else (1, 8, 8)
    seeds = np.arange(START, START + N, dtype=np.int64)
    eps, labels = seed_latents(seeds, shape, LABEL_DIM if cond else 0)
    x0 = np.random.default_rng(0).uniform(-1.2, 1.2, (N,) + shape).astype(np.float32)
    arrays = {"x0": x0, "xT": (SIGMA_MAX * eps).numpy(), "seeds": seeds} | ({"labels": labels} if cond else {})
    meta = {"teacher": {"path": "teacher.pt", "sha256": "0" * 64, "label_dim": LABEL_DIM if cond else 0},
            "sampler": {"steps": 4, "sigma_min": 0.002, "sigma_max": SIGMA_MAX, "rho": 7}, "batch": 8}
    write_pairset(path, arrays, meta)
    return open_pairset(path)


@pytest.fixture(params=[False, True], ids=["uncond", "cond"])
def store(request, tmp_path):
    return make_store(tmp_path / "store", request.param)


def import_back(out, to):
    """The export imported with the params.yaml `pairs:` section its EXPORT.json gives."""
    pairs = json.loads((out / "EXPORT.json").read_text())["import"]["pairs"]
    assert pairs["source"] == "import"
    return import_pairs(pairs["format"], pairs["path"], to, pairs["sigma_max"], {}, **pairs.get("options", {}))


def assert_same_bytes(a, b, names=("x0", "xT", "seeds", "labels")):
    assert set(a.arrays) == set(b.arrays)
    for name in set(names) & set(a.arrays):
        assert (a[name].dtype, a[name].shape) == (b[name].dtype, b[name].shape), name
        assert a[name].tobytes() == b[name].tobytes(), name


def test_get_export_reads_as_gets_loader_and_imports_back_bitwise(store, tmp_path):
    cond = "labels" in store.arrays
    out = tmp_path / "get"
    export_pairs(store.path, "get", out, batch=1)     # 60 batches of 1: a chunk of 50 seeds, then one of 10
    names = sorted(os.listdir(out / "latent"), key=lambda f: int(f.split(".")[0]))     # GET's find_files
    assert names == sorted(os.listdir(out / "image")) == [f"{START + 49:09d}.pkl", f"{START + N - 1:09d}.pkl"]
    latents = [torch.load(out / "latent" / f) for f in names]
    if cond:        # PairedCondDataset: z, c = torch.load(f)
        assert all(isinstance(z, list) and len(z) == 2 for z in latents)
        c = torch.cat([z[1] for z in latents])
        latents = [z[0] for z in latents]
        assert c.dtype == torch.float32 and c.shape == (N, LABEL_DIM) and (c.sum(1) == 1).all()
        np.testing.assert_array_equal(c.argmax(1).numpy(), store["labels"])
    z, x = torch.cat(latents), torch.cat([torch.load(out / "image" / f) for f in names])
    assert z.dtype == torch.float32 and z.shape == store["xT"].shape and 0.9 < z.std() < 1.1      # unit noise
    np.testing.assert_array_equal((SIGMA_MAX * z).numpy(), store["xT"])       # as the pairs stage scales it
    assert x.dtype == (torch.float32 if cond else torch.float64)       # cond_generate.py's .float(); else the sampler's
    np.testing.assert_array_equal(x.numpy(), store["x0"])
    assert (out / "CARD.md").read_text() == (store.path / "CARD.md").read_text()
    back = import_back(out, tmp_path / "back")
    assert_same_bytes(back, store)

    # an imported store has no seed-to-noise rule: eps = x_T / sigma_max, back within float rounding
    again = tmp_path / "again"
    export_pairs(back.path, "get", again)
    assert "x_T / sigma_max" in json.loads((again / "EXPORT.json").read_text())["noise"]
    twice = import_back(again, tmp_path / "twice")
    assert_same_bytes(twice, store, names=("x0", "seeds", "labels"))
    np.testing.assert_allclose(twice["xT"], store["xT"], rtol=1e-6, atol=0)


def test_kdm_export_reads_as_their_loaders_and_imports_back_bitwise(store, tmp_path):
    cond = "labels" in store.arrays
    out = tmp_path / "kdm"
    export_pairs(store.path, "kdm", out)
    assert sorted(os.listdir(out)) == ["CARD.md", "EXPORT.json", "pairs"]     # their glob sees the pair files only
    paths = sorted((out / "pairs").glob("*"), key=lambda p: int(p.stem[4:]))
    assert [p.name for p in paths] == [f"path{s}.npz" for s in store["seeds"]]
    for row, path in enumerate(paths):
        data = np.load(path)
        ends = data["endpoints"] if cond else data["arr_0"]
        assert sorted(data.files) == (["endpoints", "label"] if cond else ["arr_0"])
        assert ends.dtype == np.float64 and ends.shape == (2,) + store["x0"].shape[1:]
        np.testing.assert_array_equal(ends[0], store["x0"][row])      # x_0 = dynamics[0], x_T = dynamics[-1]
        np.testing.assert_array_equal(ends[-1], store["xT"][row])
        if cond:
            label = data["label"]
            assert label.dtype == np.float32 and label.shape == (LABEL_DIM,) and label.sum() == 1
            assert label.argmax() == store["labels"][row]
    assert_same_bytes(import_back(out, tmp_path / "back"), store)


def test_edm_png_export_is_edms_dataset_layout(store, tmp_path):
    cond, n = "labels" in store.arrays, 25
    out = tmp_path / "png"
    summary = export_pairs(store.path, "edm-png", out, count=n)
    assert "import" not in summary and summary["count"] == n and summary["seeds"] == [START, START + n - 1]
    names = [f"00000/img{i:08d}.png" for i in range(n)]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == names
    labels = json.loads((out / "dataset.json").read_text())["labels"]
    assert labels == ([[name, int(y)] for name, y in zip(names, store["labels"][:n])] if cond else None)
    want = (np.asarray(store["x0"][:n]) * 127.5 + 128).clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    assert want.min() == 0 and want.max() == 255        # the images strayed outside [-1, 1]: clipped
    for name, pixels in zip(names, want):
        image = Image.open(out / name)
        assert image.mode == ("RGB" if cond else "L")
        np.testing.assert_array_equal(np.asarray(image).reshape(pixels.shape), pixels)


def test_a_store_whose_noise_is_not_its_seeds_is_refused_naming_the_seed(tmp_path):
    store = make_store(tmp_path / "store", cond=False)
    arrays = {name: np.array(store[name]) for name in store.arrays}
    arrays["xT"][13, 0, 2, 2] = np.nextafter(arrays["xT"][13, 0, 2, 2], np.float32(np.inf))   # one bit
    write_pairset(tmp_path / "changed", arrays, store.meta)
    with pytest.raises(PairSetError, match=f"seed {START + 13}: the stored x_T is not sigma_max"):
        export_pairs(tmp_path / "changed", "get", tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["changed", "store"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder whose params name EXP and whose store is built; the CLI runs in it, in this process."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_digits(EXP)))
    make_store(tmp_path / dag.store_dir(EXP), cond=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli(capsys, *args):
    rc = main(["export-pairs", EXP, *args])
    out, err = capsys.readouterr()
    return rc, out, err.strip().splitlines()[-1] if err.strip() else ""


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("args, message", [
    (["--format", "dsno", "--out", "out"], "unknown format 'dsno'; expected get, kdm"),
    (["--format", "kdm", "--out", "held"], "held: holds 1 files or folders (notes.txt); expected an empty or new"),
    (["--format", "get", "--out", "out", "--count", str(N + 1)],
     f"--count {N + 1}: the store {dag.store_dir(EXP).rstrip('/')} holds {N} pairs"),
    (["--format", "edm-png", "--out", "out", "--batch", "4"], "--batch 4: only the get layout has batches"),
])
def test_bad_input_is_one_line_and_changes_nothing(project, capsys, args, message):
    (project / "held").mkdir()
    (project / "held/notes.txt").write_text("mine\n")
    before = listing(project)
    rc, out, err = cli(capsys, *args)
    assert rc == 1 and err.startswith("kdm: error: ") and message in err, err
    assert listing(project) == before


def test_cli_exports_into_an_empty_folder(project, capsys):
    (project / "out").mkdir()
    rc, out, _ = cli(capsys, "--format", "kdm", "--out", "out", "--count", "5")
    assert rc == 0 and f"5 pairs of {EXP} (seeds {START}..{START + 4}) as kdm-npz" in out
    assert sorted(os.listdir(project / "out/pairs")) == sorted(f"path{s}.npz" for s in range(START, START + 5))
    shutil.rmtree(project / dag.store_dir(EXP))
    rc, _, err = cli(capsys, "--format", "kdm", "--out", "elsewhere")
    assert rc == 1 and "not built yet" in err and not (project / "elsewhere").exists()


@pytest.mark.parametrize("fmt, writer, fail_at", [("get", "save_get_chunk", 2), ("kdm", "save_npz", 3),
                                                  ("edm-png", "save_png", 3)])
def test_a_disk_that_fills_midway_leaves_nothing(project, capsys, monkeypatch, fmt, writer, fail_at):
    calls, save = [], getattr(pairexport, writer)

    def filling(*args):
        calls.append(args)
        if len(calls) == fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[0]))
        save(*args)

    monkeypatch.setattr(pairexport, writer, filling)
    before = listing(project)
    rc, _, err = cli(capsys, "--format", fmt, "--out", "out", "--batch" if fmt == "get" else "--count",
                     "1" if fmt == "get" else "10")
    assert rc == 1 and len(calls) == fail_at and "No space left on device" in err, err
    assert listing(project) == before       # neither the export nor its temporary sibling
