"""Export a pair store in the layouts published trainers read: the inverse of kdm.pairimport, plus EDM's images.

Formats (named as kdm.pairimport names them; the CLI's `--format kdm` is "kdm-npz"), written as the publishers'
own code writes them and their loaders read them:
- "get": GET (github.com/locuslab/get): data/generate.py and cond_generate.py write, datasets.py (PairedDataset,
  PairedCondDataset) reads `latent/<S>.pkl` and `image/<S>.pkl`, torch.save'd chunks of 50 sampler batches named by
  their last seed S (9 digits). Written as one GPU writes them (world_size 1) with `batch` seeds per batch (default:
  the store's pairs batch, else GET's 250), so a chunk holds contiguous seeds. A latent chunk is unit-variance eps
  [n, C, H, W] float32, conditional: [eps, one-hot labels [n, label_dim] float32]; an image chunk is x_0
  [n, C, H, W], float64 unconditional and float32 conditional, as those scripts save them.
- "kdm-npz": the KDM authors (github.com/azencot-group/KDM, edm/generate.py; data/data_loading/datasets_objects.py):
  one np.savez_compressed file per pair, `pairs/path<s>.npz` for seed s, in a folder of their own (their loaders
  glob every file of the folder they are given). Unconditional key `arr_0`, conditional keys `endpoints` and `label`
  (one-hot float32 [label_dim]); the endpoints are [x_0, x_T] float64, x_T = sigma_max * eps, in the order their
  generator writes them and Cifar10DatasetCond, FFHQDataset and AFHQv2Dataset read them. Their Cifar10Dataset
  (CIFAR-10 unconditional training) reads arr_0 the other way round, [x_T, x_0]: swap the two for that loader
  (kdm.pairimport tells the order by scale, so it reads either).
- "edm-png": EDM's dataset_tool.py folder (NVlabs/edm), for its fid.py and train.py: x_0 as uncompressed PNGs
  `00000/img00000000.png` ... (image i is the i-th exported pair, seed seeds[0] + i), quantised as EDM does
  (kdm.images.to_uint8), and dataset.json `{"labels": [[name, class], ...]}` (null without labels). Lossy (uint8
  x_0, no x_T): it is not imported back.

Noise and the round trip (import with the `pairs:` section EXPORT.json gives, kdm.pairimport): x_T in the store is
sigma_max * eps. For a store the pairs stage sampled (its meta names no import source), GET's eps is regenerated
from each seed as that stage drew it (kdm.edm.seed_latents), and sigma_max * eps, as the import computes it
(kdm.pairimport.noise_to_xT), must equal the stored x_T bit for bit (and the drawn labels the stored ones), else
the export is refused naming the seed: importing the export gives the store's x0, xT, seeds and labels bytes. An
imported store has no seed-to-noise rule, so GET's eps is x_T / sigma_max and the round trip's x_T is then equal
within float rounding. kdm-npz holds x_T itself: its round trip is bitwise either way.

Safety: the export is written into a temporary sibling of the output folder, renamed onto it at the end and
removed on any error (kdm.io.atomic_path); the output folder must be empty or new. Beside the data lie the store's
CARD.md and EXPORT.json: what was exported and the params.yaml `pairs:` section that imports it back.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kdm.edm import seed_latents
from kdm.images import pil_image, to_uint8
from kdm.io import atomic_path
from kdm.nets import one_hot
from kdm.pairimport import get_layout, noise_to_xT
from kdm.pairset import PairSet, PairSetError, card, open_pairset

FORMATS = ("get", "kdm-npz", "edm-png")
ALIASES = {"kdm": "kdm-npz"}        # the CLI's word for the KDM authors' files
GET_BATCH = 250                     # GET's data/dataset.sh
BLOCK = 1024                        # store rows read at a time
KDM_DIR = "pairs"                   # the folder of path<s>.npz files inside a kdm-npz export


def export_format(name: str) -> str:
    fmt = ALIASES.get(name, name)
    if fmt not in FORMATS:
        raise PairSetError(f"export: unknown format {name!r}; expected get, kdm (the KDM authors' path<i>.npz, "
                           "also called kdm-npz) or edm-png")
    return fmt


def save_get_chunk(out: Path, name: str, latent, image: torch.Tensor) -> None:
    torch.save(latent, out / "latent" / name)
    torch.save(image, out / "image" / name)


def save_npz(path: Path, arrays: dict) -> None:
    np.savez_compressed(path, **arrays)


def save_png(path: Path, pixels: np.ndarray) -> None:
    """An HWC uint8 image as dataset_tool.py saves it: greyscale or RGB, uncompressed."""
    path.parent.mkdir(exist_ok=True)
    pil_image(pixels).save(path, format="png", compress_level=0, optimize=False)


def unit_noise(store: PairSet, lo: int, hi: int, regenerate: bool) -> np.ndarray:
    """eps of store rows lo..hi-1: regenerated from their seeds and checked against x_T, or x_T / sigma_max."""
    xT, sigma_max = np.asarray(store["xT"][lo:hi]), store.meta["sampler"]["sigma_max"]
    if not regenerate:
        return xT / np.float32(sigma_max)
    seeds = np.asarray(store["seeds"][lo:hi])
    eps, labels = seed_latents(seeds, xT.shape[1:], _label_dim(store))
    eps = eps.numpy()
    bad = np.flatnonzero((noise_to_xT(eps, sigma_max).view(np.uint32) != xT.view(np.uint32)).reshape(len(xT), -1)
                         .any(1))
    if len(bad):
        raise PairSetError(f"{store.path}: seed {seeds[bad[0]]}: the stored x_T is not sigma_max * eps(seed) as the "
                           f"pairs stage draws it (kdm.edm.seed_latents), bit for bit ({len(bad)} of seeds "
                           f"{seeds[0]}..{seeds[-1]}); the store was changed: export refused")
    if labels is not None and not np.array_equal(labels, store["labels"][lo:hi]):
        seed = seeds[np.flatnonzero(labels != store["labels"][lo:hi])[0]]
        raise PairSetError(f"{store.path}: seed {seed}: the stored label is not the one the seed draws "
                           "(kdm.edm.seed_latents); the store was changed: export refused")
    return eps


def _label_dim(store: PairSet) -> int:
    if "labels" not in store.arrays:
        return 0
    label_dim = store.meta.get("teacher", {}).get("label_dim")
    if not label_dim or int(np.max(store["labels"])) >= label_dim:
        raise PairSetError(f"{store.path}: labels up to {int(np.max(store['labels']))} but meta.teacher.label_dim is "
                           f"{label_dim!r}; expected the class count the labels index")
    return label_dim


def write_get(store: PairSet, n: int, out: Path, batch: int, bar) -> dict:
    start, label_dim = int(store["seeds"][0]), _label_dim(store)
    regenerate = "source" not in store.meta
    for d in ("latent", "image"):
        (out / d).mkdir()
    for name, seeds in sorted(get_layout(start, n, batch, 1).items()):
        lo, hi = int(seeds[0]) - start, int(seeds[-1]) - start + 1       # one GPU: a chunk is contiguous seeds
        eps = torch.from_numpy(unit_noise(store, lo, hi, regenerate))
        x0 = torch.from_numpy(np.array(store["x0"][lo:hi], np.float32 if label_dim else np.float64))
        latent = [eps, one_hot(np.array(store["labels"][lo:hi]), label_dim)] if label_dim else eps
        save_get_chunk(out, f"{name:09d}.pkl", latent, x0)
        bar.update(hi - lo)
    return {"data": ".", "options": {"seed_start": start, "batch": batch, "world_size": 1},
            "noise": "eps regenerated from each seed as the pairs stage drew it; sigma_max * eps equals the "
                     "store's x_T bit for bit" if regenerate else
                     "eps = x_T / sigma_max (an imported store: no seed-to-noise rule); importing it back gives x_T "
                     "within float rounding",
            "readers": "GET datasets.py PairedDataset / PairedCondDataset(data_dir=this folder); as GET's "
                       "find_files asserts, their world_size must divide the chunk count"}


def write_kdm_npz(store: PairSet, n: int, out: Path, batch: int, bar) -> dict:
    label_dim, seeds = _label_dim(store), np.asarray(store["seeds"][:n])
    (out / KDM_DIR).mkdir()
    for lo in range(0, n, BLOCK):
        hi = min(lo + BLOCK, n)
        ends = np.stack([store["x0"][lo:hi], store["xT"][lo:hi]], axis=1).astype(np.float64)   # [x_0, x_T] each
        labels = one_hot(np.array(store["labels"][lo:hi]), label_dim).numpy() if label_dim else None
        for i, seed in enumerate(seeds[lo:hi].tolist()):
            save_npz(out / KDM_DIR / f"path{seed}.npz",
                     {"endpoints": ends[i], "label": labels[i]} if label_dim else {"arr_0": ends[i]})
        bar.update(hi - lo)
    return {"data": KDM_DIR, "options": {}, "noise": "x_T as stored (sigma_max * eps): bitwise",
            "readers": f"KDM data/data_loading/datasets_objects.py (Cifar10DatasetCond, FFHQDataset, AFHQv2Dataset; "
                       f"Cifar10Dataset reads [x_T, x_0]) on --datapath {KDM_DIR}/ of this folder"}


def write_edm_png(store: PairSet, n: int, out: Path, batch: int, bar) -> dict:
    shape = store["x0"].shape[1:]
    if shape[0] not in (1, 3) or shape[1] != shape[2] or shape[1] & (shape[1] - 1):
        raise PairSetError(f"edm-png: the store's images have shape {tuple(shape)}; EDM's dataset_tool.py takes "
                           "1 or 3 channels, square, a power of two wide")
    names, labels = [], []
    for lo in range(0, n, BLOCK):
        hi = min(lo + BLOCK, n)
        pixels = to_uint8(np.array(store["x0"][lo:hi])).permute(0, 2, 3, 1).numpy()
        for i, px in enumerate(pixels, lo):
            names.append(f"{i:08d}"[:5] + f"/img{i:08d}.png")
            save_png(out / names[-1], px)
        if "labels" in store.arrays:
            labels += np.asarray(store["labels"][lo:hi]).tolist()
        bar.update(hi - lo)
    (out / "dataset.json").write_text(json.dumps({"labels": [list(x) for x in zip(names, labels)] or None}))
    return {"data": ".", "noise": "none: x_0 only, as uint8 (x * 127.5 + 128).clip(0, 255); lossy, not imported back",
            "readers": "EDM fid.py calc --images=this folder; train.py --data=this folder (labels: --cond=1)"}


WRITERS = {"get": write_get, "kdm-npz": write_kdm_npz, "edm-png": write_edm_png}


def _check(store: PairSet, fmt: str, out: Path, n: int, batch: int | None) -> None:
    """Everything about the request that can be known before a byte is written."""
    if out.is_dir() and any(out.iterdir()):
        held = sorted(p.name for p in out.iterdir())
        raise PairSetError(f"{out}: holds {len(held)} files or folders ({', '.join(held[:3])}"
                           f"{', ...' if len(held) > 3 else ''}); expected an empty or new folder for the export")
    if out.exists() and not out.is_dir():
        raise PairSetError(f"{out}: a file; expected an empty or new folder for the export")
    if not 0 < n <= len(store):
        raise PairSetError(f"--count {n}: the store {store.path} holds {len(store)} pairs; expected 1 to {len(store)}")
    if batch is not None and (fmt != "get" or batch < 1):
        raise PairSetError(f"--batch {batch}: only the get layout has batches, of 1 or more seeds")
    if fmt != "edm-png" and not store.meta.get("sampler", {}).get("sigma_max"):
        raise PairSetError(f"{store.path}: its meta records no sampler.sigma_max; {fmt} needs it (x_T = sigma_max * "
                           "eps)")
    seeds = np.asarray(store["seeds"][:n])
    if not np.array_equal(seeds, np.arange(seeds[0], seeds[0] + n)):
        raise PairSetError(f"{store.path}: its seeds are not contiguous and increasing from {seeds[0]}; the "
                           "exported layouts name pairs by a seed range")
    if fmt in ("get", "edm-png") and store["x0"].ndim != 4:
        raise PairSetError(f"{fmt}: the store's samples have shape {tuple(store['x0'].shape[1:])}; {fmt} holds "
                           "images [C, H, W] (export vector pairs as kdm)")


def export_pairs(store_path, fmt: str, out, count: int | None = None, batch: int | None = None) -> dict:
    """Write the first `count` pairs (default all) of the store at `store_path` into the empty or new folder `out`
    in format `fmt`; returns what EXPORT.json records. `batch`: GET's layout (see the module doc)."""
    fmt, out = export_format(fmt), Path(out)
    store = open_pairset(store_path)
    n = len(store) if count is None else count
    _check(store, fmt, out, n, batch)
    seeds = np.asarray(store["seeds"][:n])
    sigma_max = store.meta.get("sampler", {}).get("sigma_max")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        with tqdm(total=n, desc=f"export {fmt} {out}", mininterval=2.0) as bar:
            layout = WRITERS[fmt](store, n, tmp, batch or store.meta.get("batch", GET_BATCH), bar)
        card_md = store.path / "CARD.md"
        if card_md.is_file():
            shutil.copyfile(card_md, tmp / "CARD.md")
        else:       # a store written before pair cards existed
            (tmp / "CARD.md").write_text(card(store.manifest))
        summary = {"format": fmt, "store": str(store.path), "count": n, "of": len(store),
                   "seeds": [int(seeds[0]), int(seeds[-1])], "sigma_max": sigma_max,
                   "labels": "labels" in store.arrays, **{k: layout[k] for k in ("data", "noise", "readers")}}
        if fmt != "edm-png":
            summary["import"] = {"pairs": {"source": "import", "format": fmt,
                                           "path": str((out / layout["data"]).resolve()), "sigma_max": sigma_max}
                                 | ({"options": layout["options"]} if layout["options"] else {}),
                                 "note": "replaces the experiment's pairs: section; drop its rederive: section too "
                                         "(an imported set records no teacher to re-sample)"}
        (tmp / "EXPORT.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
