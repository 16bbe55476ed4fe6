"""Importing published pair sets: GET's chunked torch files and the KDM authors' per-pair npz files.

The synthetic sets are written the way the publishers' scripts write them (GET data/generate.py and
cond_generate.py: tensor_split batches dealt round-robin to GPUs, a chunk every 50 batches named by its
last seed; KDM edm/generate.py: path<i>.npz), so the importer is checked against that layout, not its own.
"""
import json

import numpy as np
import pytest
import torch

from kdm.pairimport import import_pairs
from kdm.pairset import PairSetError, gather, open_pairset

SHAPE = (3, 32, 32)
LABEL_DIM = 10


def pair_of(seed: int):
    """Unit noise, a teacher image and a class for `seed`: the truth the import must reproduce."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(SHAPE, generator=g)
    x = torch.rand(SHAPE, generator=g, dtype=torch.float64) * 2 - 1
    return z, x, int(torch.randint(LABEL_DIM, (), generator=g))


def write_get(root, seeds, batch, world_size, cond):
    """GET's generate.py / cond_generate.py saving loop, one rank after another."""
    num_batches = ((len(seeds) - 1) // (batch * world_size) + 1) * world_size
    all_batches = torch.as_tensor(seeds).tensor_split(num_batches)
    for d in ("latent", "image"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for rank in range(world_size):
        latents, labels, images = [], [], []
        for batch_seeds in all_batches[rank::world_size]:
            if len(batch_seeds) == 0:
                continue
            z, x, y = zip(*(pair_of(int(s)) for s in batch_seeds))
            latents.append(torch.stack(z))
            images.append(torch.stack(x).float() if cond else torch.stack(x))   # cond_generate.py calls .float()
            labels.append(torch.eye(LABEL_DIM)[list(y)])
            last = int(batch_seeds[-1])
            if len(images) % 50 == 0:
                save_get_chunk(root, last, latents, labels, images, cond)
                latents, labels, images = [], [], []
        if images:
            save_get_chunk(root, last, latents, labels, images, cond)


def save_get_chunk(root, last, latents, labels, images, cond):
    latent = [torch.cat(latents), torch.cat(labels)] if cond else torch.cat(latents)
    torch.save(latent, root / "latent" / f"{last:09d}.pkl")
    torch.save(torch.cat(images), root / "image" / f"{last:09d}.pkl")


def truth(seeds, cond, image_dtype=np.float32):
    z, x, y = zip(*(pair_of(int(s)) for s in seeds))
    x = torch.stack(x)
    arrays = {"x0": (x.float() if cond else x).numpy().astype(image_dtype),
              "xT": 80 * torch.stack(z).numpy(), "seeds": np.asarray(seeds, np.int64)}
    return arrays | ({"labels": np.asarray(y, np.int64)} if cond else {})


def assert_store(store, expected):
    assert sorted(store.arrays) == sorted(expected)
    for name, want in expected.items():
        assert store[name].dtype == want.dtype, name
        np.testing.assert_array_equal(store[name], want, err_msg=name)


def no_output(tmp_path, out="out"):
    return not (tmp_path / out).exists() and not list(tmp_path.glob(f".{out}.tmp-*"))


@pytest.mark.parametrize("cond", [False, True])
def test_get_multi_gpu_chunks_round_trip_in_seed_order(tmp_path, cond):
    # 250 seeds, batch 2 on 2 GPUs: 126 batches (124 of 2, 2 of 1), 63 per GPU -> chunks of 50 + 13 batches whose
    # seeds interleave between the GPUs: 4 files per directory
    write_get(tmp_path / "get", list(range(250)), batch=2, world_size=2, cond=cond)
    assert len(list((tmp_path / "get" / "latent").iterdir())) == 4
    store = import_pairs("get", tmp_path / "get", tmp_path / "out", 80, {"teacher": {"name": "edm-cifar10"}},
                         batch=2, world_size=2)
    assert_store(store, truth(range(250), cond))
    store = open_pairset(tmp_path / "out", check="full")
    assert store.manifest["seed_range"] == [0, 250]
    meta = store.meta
    assert meta["teacher"] == {"name": "edm-cifar10", "label_dim": LABEL_DIM if cond else 0}
    assert meta["sampler"] == {"sigma_max": 80}
    src = meta["source"]
    assert src["format"] == "get" and src["path"] == str(tmp_path / "get") and src["files"] == 8
    assert (src["batch"], src["world_size"]) == (2, 2) and len(src["sha256"]) == 64
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_get_import_is_a_store_gather_accepts(tmp_path):
    write_get(tmp_path / "get", list(range(100, 230)), batch=4, world_size=3, cond=True)
    imported = import_pairs("get", tmp_path / "get", tmp_path / "imported", 80, {}, seed_start=100, batch=4,
                            world_size=3)
    store = gather([tmp_path / "imported"], tmp_path / "store", expect_meta=imported.meta, expect_seeds=(100, 230))
    assert_store(store, truth(range(100, 230), cond=True))
    assert store.meta["source"]["seed_start"] == 100


@pytest.mark.parametrize("cond", [False, True])
def test_kdm_npz_round_trip_either_endpoint_order(tmp_path, cond):
    src = tmp_path / "kdm"
    src.mkdir()
    for i in range(5):
        z, x, y = pair_of(i)
        ends = np.stack([x.numpy(), 80 * z.double().numpy()])       # generate.py: path[[0, -1]] = [x_0, x_T]
        if i % 2:
            ends = np.stack([ends[1], np.zeros_like(ends[0]), ends[0]])   # the loader's order, a 3-step path
        data = {"endpoints": ends, "label": np.eye(LABEL_DIM, dtype=np.float32)[y]} if cond else {"arr_0": ends}
        np.savez_compressed(src / f"path{i}", **data)
    store = import_pairs("kdm-npz", src, tmp_path / "out", 80, {})
    z, x, y = zip(*(pair_of(i) for i in range(5)))
    want = {"x0": torch.stack(x).float().numpy(), "xT": (80 * torch.stack(z).double()).float().numpy(),
            "seeds": np.arange(5)} | ({"labels": np.asarray(y)} if cond else {})
    assert_store(store, want)
    assert store.meta["teacher"]["label_dim"] == (LABEL_DIM if cond else 0)
    assert store.meta["source"]["format"] == "kdm-npz" and "file index" in store.meta["source"]["seeds"]


def get_set(tmp_path, cond=False, n=120):
    write_get(tmp_path / "get", list(range(n)), batch=1, world_size=1, cond=cond)   # chunks 49, 99, 119
    return tmp_path / "get"


def run_get(tmp_path, **options):
    return import_pairs("get", tmp_path / "get", tmp_path / "out", 80, {}, **{"batch": 1, "world_size": 1, **options})


def test_get_missing_directories(tmp_path):
    with pytest.raises(PairSetError, match=r"get/latent: missing; expected GET's chunk directory"):
        run_get(tmp_path)
    get_set(tmp_path)
    for f in (tmp_path / "get" / "image").iterdir():
        f.unlink()
    (tmp_path / "get" / "image").rmdir()
    with pytest.raises(PairSetError, match=r"get/image: missing"):
        run_get(tmp_path)
    assert no_output(tmp_path)


def test_get_mismatched_chunk_counts(tmp_path):
    (get_set(tmp_path) / "image" / "000000099.pkl").unlink()
    with pytest.raises(PairSetError, match=r"latent/ has 3 chunks and image/ 2; chunks in only one: \[99\]"):
        run_get(tmp_path)
    assert no_output(tmp_path)


def test_get_lost_chunk_or_wrong_layout_options(tmp_path):
    src = get_set(tmp_path)
    with pytest.raises(PairSetError, match=r"batch 1 on 2 GPUs: missing chunks \['000000098.pkl', '000000118.pkl'\], "
                                           r"unexpected \['000000049.pkl'\] \(a lost chunk, or other batch/world_size"):
        run_get(tmp_path, world_size=2)
    for d in ("latent", "image"):
        (src / d / "000000049.pkl").unlink()
    with pytest.raises(PairSetError, match=r"contiguous seeds 0..119 .* missing chunks \['000000049.pkl'\], "
                                           r"unexpected \[\]"):
        run_get(tmp_path)
    assert no_output(tmp_path)


def test_get_shape_mismatches(tmp_path):
    src = get_set(tmp_path)
    torch.save(torch.zeros(40, *SHAPE, dtype=torch.float64), src / "image" / "000000099.pkl")
    with pytest.raises(PairSetError, match=r"image/000000099.pkl: images of shape \[40, 3, 32, 32\]; "
                                           r"expected \[50, 3, 32, 32\]"):
        run_get(tmp_path)
    torch.save(torch.zeros(49, *SHAPE), src / "latent" / "000000099.pkl")
    with pytest.raises(PairSetError, match=r"latent/000000099.pkl: noise of shape \[49, 3, 32, 32\]; expected \[50, C"):
        run_get(tmp_path)
    torch.save(torch.randn(50, 3, 16, 16), src / "latent" / "000000099.pkl")
    torch.save(torch.zeros(50, 3, 16, 16), src / "image" / "000000099.pkl")
    with pytest.raises(PairSetError, match=r"\{latent,image\}/000000099.pkl: x0 rows of shape \[3, 16, 16\], "
                                           r"expected \[3, 32, 32\]"):
        run_get(tmp_path)
    assert no_output(tmp_path)


def test_get_corrupt_and_foreign_files(tmp_path):
    src = get_set(tmp_path)
    f = src / "image" / "000000119.pkl"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(PairSetError, match=r"image/000000119.pkl: not a readable torch.save file"):
        run_get(tmp_path)
    torch.save((torch.rand(20, *SHAPE) * 255).to(torch.uint8), f)
    with pytest.raises(PairSetError, match=r"000000119.pkl: images has dtype uint8; expected the sampler's floats"):
        run_get(tmp_path)
    torch.save(80 * torch.randn(20, *SHAPE), src / "latent" / "000000119.pkl")
    with pytest.raises(PairSetError, match=r"latent/000000119.pkl: noise std [0-9.]+; expected unit-variance eps"):
        run_get(tmp_path)
    (src / "latent" / "notes.txt").write_text("hi")
    with pytest.raises(PairSetError, match=r"latent: unexpected files \['notes.txt'\]"):
        run_get(tmp_path)
    assert no_output(tmp_path)


def test_get_bad_labels_and_mixed_conditioning(tmp_path):
    src = get_set(tmp_path, cond=True)
    z, c = torch.load(src / "latent" / "000000099.pkl")
    c[3] = 0.5
    torch.save([z, c], src / "latent" / "000000099.pkl")
    with pytest.raises(PairSetError, match=r"000000099.pkl: labels of shape \[50, 10\] are not one-hot rows"):
        run_get(tmp_path)
    torch.save(z, src / "latent" / "000000099.pkl")
    with pytest.raises(PairSetError, match=r"000000099.pkl: has \['x0', 'xT'\], but .*000000049.pkl has "
                                           r"\['labels', 'x0', 'xT'\] \(conditional and unconditional files mixed"):
        run_get(tmp_path)
    assert no_output(tmp_path)


def kdm_set(tmp_path, n=3):
    src = tmp_path / "kdm"
    src.mkdir()
    for i in range(n):
        z, x, _ = pair_of(i)
        np.savez_compressed(src / f"path{i}", np.stack([x.numpy(), 80 * z.double().numpy()]))
    return src


def run_kdm(tmp_path):
    return import_pairs("kdm-npz", tmp_path / "kdm", tmp_path / "out", 80, {})


def test_kdm_npz_errors(tmp_path):
    with pytest.raises(PairSetError, match=r"kdm: missing; expected the KDM authors' directory"):
        run_kdm(tmp_path)
    src = kdm_set(tmp_path, 4)
    (src / "path2.npz").unlink()
    with pytest.raises(PairSetError, match=r"not contiguous from path0.npz: missing \['path2.npz'\]"):
        run_kdm(tmp_path)
    np.savez(src / "path2", x0=np.zeros(SHAPE), xT=np.zeros(SHAPE))
    with pytest.raises(PairSetError, match=r"path2.npz: keys \['x0', 'xT'\]; expected \['arr_0'\] \(unconditional\) "
                                           r"or \['endpoints', 'label'\] \(conditional\)"):
        run_kdm(tmp_path)
    z, x, _ = pair_of(2)
    np.savez(src / "path2", np.stack([x.numpy(), z.numpy()]))       # unit noise: x_T was not scaled by sigma_max
    with pytest.raises(PairSetError, match=r"path2.npz: cannot tell x_T from x_0: endpoint stds .*near 80"):
        run_kdm(tmp_path)
    np.savez(src / "path2", endpoints=np.stack([x.numpy(), 80 * z.numpy()]), label=np.int64(3))
    with pytest.raises(PairSetError, match=r"path2.npz: label of shape \[\]; expected a one-hot vector"):
        run_kdm(tmp_path)
    (src / "path2.npz").write_bytes((src / "path1.npz").read_bytes()[:-30])
    with pytest.raises(PairSetError, match=r"path2.npz: not a readable .npz file"):
        run_kdm(tmp_path)
    assert no_output(tmp_path)


def test_unknown_format_and_conflicting_meta(tmp_path):
    with pytest.raises(PairSetError, match=r"unknown format 'dsno'; expected one of \['get', 'kdm-npz'\]"):
        import_pairs("dsno", tmp_path, tmp_path / "out", 80, {})
    kdm_set(tmp_path)
    with pytest.raises(PairSetError, match=r"meta.sampler.sigma_max is 40 but the imported pairs have 80"):
        import_pairs("kdm-npz", tmp_path / "kdm", tmp_path / "out", 80, {"sampler": {"sigma_max": 40}})
    assert no_output(tmp_path)
