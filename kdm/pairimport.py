"""Import published pair sets into our pair store, streaming one source file at a time.

Formats (read from the publishers' own code):
- "get": GET (Geng et al. 2023, github.com/locuslab/get, data/generate.py, data/cond_generate.py,
  datasets.py). `latent/<S>.pkl` and `image/<S>.pkl` are torch.save'd chunks of 50 sampler batches; S is
  the last seed of the chunk's last batch, zero-padded to 9 digits. A latent chunk is unit-variance noise
  [n, C, H, W] float32 (conditional sets: a list [noise, one-hot labels [n, label_dim] float32]); an image
  chunk is the sampler's raw float output [n, C, H, W] (float64 unconditional, float32 conditional),
  unclipped, nominally in [-1, 1]. Seeds were split with tensor_split into batches dealt round-robin to
  `world_size` GPUs, so with several GPUs a chunk holds interleaved seed blocks: the layout is rebuilt
  from (seed_start, batch, world_size); GET's data/dataset.sh used seeds 0-999999, batch 250, 4 GPUs.
- "kdm-npz": the KDM authors (github.com/azencot-group/KDM, edm/generate.py, koopman_distillation/data/
  data_loading/datasets_objects.py): one np.savez_compressed file per pair, `path<i>.npz`; unconditional
  key `arr_0`, conditional keys `endpoints` and `label` (one-hot). The endpoints hold x_T already scaled
  by sigma_max and x_0 (float64); their generator writes [x_0, x_T] but their unconditional loader reads
  [x_T, x_0], so each file's order is told apart by scale (x_T's std is about sigma_max). No seeds: their
  noise came from one global torch RNG, so our seeds are the file indices i.

Output: x0 float32 NCHW, xT = sigma_max * eps float32, seeds int64 in increasing order, labels int64 class
indices. The manifest's meta records the source (format, path, file count, bytes and a sha256 over the
list of file hashes), sampler.sigma_max and teacher.label_dim, as the training stage reads them.
kdm.pairexport writes a store back out in these layouts (and EDM's PNG folder).
"""
from __future__ import annotations

import hashlib
import io
import re
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from kdm.pairset import PairSet, PairSetError, open_pairset, stream_pairset

GET_CHUNK_BATCHES = 50      # GET's generate.py saves a chunk every 50 batches


class SourceListing:
    """Reads source files once each, hashing them on the way: the import records what it read without a
    second pass over (possibly tens of GB of) source files."""

    def __init__(self, root: Path):
        self.root, self.files, self.bytes, self.digest = root, 0, 0, hashlib.sha256()

    def read(self, path: Path) -> bytes:
        data = path.read_bytes()
        self.files += 1
        self.bytes += len(data)
        self.digest.update(f"{path.relative_to(self.root)} {hashlib.sha256(data).hexdigest()}\n".encode())
        return data

    def summary(self) -> dict:
        return {"files": self.files, "bytes": self.bytes, "sha256": self.digest.hexdigest()}


def get_layout(seed_start: int, count: int, batch: int, world_size: int) -> dict[int, np.ndarray]:
    """{chunk name: its seeds in row order} as GET's generate.py writes seeds seed_start..seed_start+count-1."""
    num_batches = ((count - 1) // (batch * world_size) + 1) * world_size
    batches = np.array_split(np.arange(seed_start, seed_start + count, dtype=np.int64), num_batches)  # = tensor_split
    chunks = {}
    for rank in range(world_size):
        mine = [b for b in batches[rank::world_size] if len(b)]        # generate.py skips empty batches
        for i in range(0, len(mine), GET_CHUNK_BATCHES):
            seeds = np.concatenate(mine[i:i + GET_CHUNK_BATCHES])
            chunks[int(seeds[-1])] = seeds
    return chunks


def noise_to_xT(eps: np.ndarray, sigma_max: float) -> np.ndarray:
    """x_T = sigma_max * eps in float32, as the import computes it (kdm.pairexport checks its GET latents against
    this very product, so that an export imports back to the same x_T bytes)."""
    return np.float32(sigma_max) * eps


def _chunk_names(directory: Path) -> dict[int, Path]:
    if not directory.is_dir():
        raise PairSetError(f"{directory}: missing; expected GET's chunk directory of <seed>.pkl files")
    files = sorted(directory.iterdir())
    bad = [f.name for f in files if not re.fullmatch(r"\d+\.pkl", f.name)]
    if bad:
        raise PairSetError(f"{directory}: unexpected files {bad[:5]}; expected only GET chunks named <seed>.pkl")
    if not files:
        raise PairSetError(f"{directory}: empty; expected GET chunks named <seed>.pkl")
    return {int(f.stem): f for f in files}


def _torch_load(path: Path, listing: SourceListing):
    try:
        return torch.load(io.BytesIO(listing.read(path)), map_location="cpu", weights_only=True)
    except Exception as e:      # pickle, zip and EOF errors alike mean a corrupt or foreign file
        raise PairSetError(f"{path}: not a readable torch.save file ({type(e).__name__}: {e})") from None


def _numpy(arr) -> np.ndarray:
    return arr.numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)


def _floats(arr, path: Path, what: str) -> np.ndarray:
    """A float array as float32; refuses integer data (e.g. uint8 images), which these formats never hold."""
    arr = _numpy(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise PairSetError(f"{path}: {what} has dtype {arr.dtype}; expected the sampler's floats "
                           "(images in [-1, 1], not uint8)")
    return arr.astype(np.float32)


def _class_indices(onehot: np.ndarray, path: Path) -> np.ndarray:
    if onehot.ndim != 2 or not np.all((onehot == 0) | (onehot == 1)) or not np.all(onehot.sum(1) == 1):
        raise PairSetError(f"{path}: labels of shape {list(onehot.shape)} are not one-hot rows; "
                           "expected [n, label_dim] of 0/1 with a single 1 per row")
    return onehot.argmax(1).astype(np.int64)


def read_get(root: Path, sigma_max: float, listing: SourceListing, seed_start: int = 0, batch: int = 250,
             world_size: int = 4):
    """GET's chunk directory: (seeds, chunks), chunks yielding (files, rows, arrays)."""
    latent, image = _chunk_names(root / "latent"), _chunk_names(root / "image")
    if latent.keys() != image.keys():
        raise PairSetError(f"{root}: latent/ has {len(latent)} chunks and image/ {len(image)}; chunks in only one: "
                           f"{sorted(latent.keys() ^ image.keys())[:5]} (every latent chunk needs its image chunk)")
    count = max(latent) - seed_start + 1        # the last batch's last seed names the last chunk
    if count < 1:
        raise PairSetError(f"{root}: chunk names {sorted(latent)[:3]} lie before seed_start {seed_start}")
    layout = get_layout(seed_start, count, batch, world_size)
    if layout.keys() != latent.keys():
        missing, extra = sorted(layout.keys() - latent.keys()), sorted(latent.keys() - layout.keys())
        raise PairSetError(
            f"{root}: the chunks do not hold contiguous seeds {seed_start}..{seed_start + count - 1} as GET writes "
            f"them with batch {batch} on {world_size} GPUs: missing chunks {[f'{s:09d}.pkl' for s in missing[:5]]}, "
            f"unexpected {[f'{s:09d}.pkl' for s in extra[:5]]} (a lost chunk, or other batch/world_size options)")

    def chunks():
        for name, seeds in sorted(layout.items()):
            z, x = _torch_load(latent[name], listing), _torch_load(image[name], listing)
            labels = None
            if isinstance(z, (list, tuple)):            # conditional: [noise, one-hot labels]
                if len(z) != 2:
                    raise PairSetError(f"{latent[name]}: a list of {len(z)} items; expected [noise, one-hot labels]")
                z, labels = z
            if not isinstance(z, torch.Tensor) or not isinstance(x, torch.Tensor):
                raise PairSetError(f"{latent[name]}, {image[name]}: expected tensors, got {type(z).__name__} "
                                   f"and {type(x).__name__}")
            if z.ndim != 4 or len(z) != len(seeds):
                raise PairSetError(f"{latent[name]}: noise of shape {list(z.shape)}; expected [{len(seeds)}, C, H, W] "
                                   "(this chunk's seed count, NCHW)")
            if x.shape != z.shape:
                raise PairSetError(f"{image[name]}: images of shape {list(x.shape)}; expected {list(z.shape)} "
                                   f"like its noise in {latent[name]}")
            if labels is not None and (labels.ndim != 2 or len(labels) != len(seeds)):
                raise PairSetError(f"{latent[name]}: labels of shape {list(labels.shape)}; expected "
                                   f"[{len(seeds)}, label_dim] one-hot rows")
            z = _floats(z, latent[name], "noise")
            if not 0.5 < z.std() < 2:
                raise PairSetError(f"{latent[name]}: noise std {z.std():.3g}; expected unit-variance eps "
                                   "(GET stores the noise before scaling by sigma_max)")
            arrays = {"x0": _floats(x, image[name], "images"), "xT": noise_to_xT(z, sigma_max)}
            if labels is not None:
                arrays["labels"] = _numpy(labels)
            yield root / "{latent,image}" / latent[name].name, seeds - seed_start, arrays

    return np.arange(seed_start, seed_start + count, dtype=np.int64), chunks()


KDM_KEYS = ({"arr_0"}, {"endpoints", "label"})      # unconditional, conditional


def _endpoints(pair: np.ndarray, path: Path, sigma_max: float) -> tuple[np.ndarray, np.ndarray]:
    """(x0, xT) from a [T >= 2, C, H, W] path whose ends are x_0 and x_T in either order (see the module doc)."""
    if pair.ndim < 2 or len(pair) < 2:
        raise PairSetError(f"{path}: endpoints of shape {list(pair.shape)}; expected [2, C, H, W] (x_0 and x_T)")
    a, b = pair[0], pair[-1]
    x0, xT = (a, b) if a.std() < b.std() else (b, a)
    if not (sigma_max / 2 < xT.std() < 2 * sigma_max and x0.std() < sigma_max / 10):
        raise PairSetError(f"{path}: cannot tell x_T from x_0: endpoint stds {a.std():.3g} and {b.std():.3g}; "
                           f"expected x_T = sigma_max * eps (std near {sigma_max}) and an image in [-1, 1]")
    return x0, xT


def read_kdm_npz(root: Path, sigma_max: float, listing: SourceListing):
    """The KDM authors' directory of path<i>.npz files: (seeds = file indices, chunks of one pair each)."""
    if not root.is_dir():
        raise PairSetError(f"{root}: missing; expected the KDM authors' directory of path<i>.npz files")
    files = {}
    for f in root.iterdir():
        m = re.fullmatch(r"path(\d+)\.npz", f.name)
        if not m:
            raise PairSetError(f"{f}: unexpected file; expected only path<i>.npz pair files")
        files[int(m.group(1))] = f
    if not files:
        raise PairSetError(f"{root}: no path<i>.npz files")
    start = min(files)
    missing = [f"path{i}.npz" for i in range(start, max(files) + 1) if i not in files]
    if missing:
        raise PairSetError(f"{root}: file indices are not contiguous from path{start}.npz: missing {missing[:5]}")

    def chunks():
        for i in sorted(files):
            path = files[i]
            try:
                with np.load(io.BytesIO(listing.read(path)), allow_pickle=False) as npz:
                    data = {k: npz[k] for k in npz.files}
            except Exception as e:      # zip, EOF and header errors alike mean a corrupt file
                raise PairSetError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
            if set(data) not in KDM_KEYS:
                raise PairSetError(f"{path}: keys {sorted(data)}; expected {sorted(KDM_KEYS[0])} (unconditional) "
                                   f"or {sorted(KDM_KEYS[1])} (conditional)")
            x0, xT = _endpoints(data.get("arr_0", data.get("endpoints")), path, sigma_max)
            arrays = {"x0": _floats(x0[None], path, "x_0"), "xT": _floats(xT[None], path, "x_T")}
            if "label" in data:
                if data["label"].ndim != 1:
                    raise PairSetError(f"{path}: label of shape {list(data['label'].shape)}; expected a one-hot "
                                       "vector [label_dim]")
                arrays["labels"] = data["label"][None]
            yield path, slice(i - start, i - start + 1), arrays

    return np.arange(start, start + len(files), dtype=np.int64), chunks()


READERS = {"get": read_get, "kdm-npz": read_kdm_npz}
SEEDS = {"get": "GET's per-seed EDM noise (drawn on CUDA: not regenerable by kdm.edm.seed_noise)",
         "kdm-npz": "file index i of path<i>.npz (noise came from a global RNG: x_T is not regenerable)"}


def _with(meta: dict, section: str, key: str, value) -> dict:
    """meta[section][key] = value, refusing a caller's different value (the data decide it)."""
    have = meta.get(section, {}).get(key, value)
    if have != value:
        raise PairSetError(f"meta.{section}.{key} is {have!r} but the imported pairs have {value!r}")
    return {**meta, section: {**meta.get(section, {}), key: value}}


def import_pairs(fmt: str, source_path, out_path, sigma_max: float, meta: dict, **options) -> PairSet:
    """Convert a published pair set at `source_path` into our store at `out_path` (atomically) and open it.

    `options` are the format's layout options (GET: seed_start, batch, world_size). Everything about the
    source's layout is checked before a byte is written; a bad file later aborts with no output.
    """
    if fmt not in READERS:
        raise PairSetError(f"pair import: unknown format {fmt!r}; expected one of {sorted(READERS)}")
    source = Path(source_path)
    listing = SourceListing(source)
    seeds, chunks = READERS[fmt](source, sigma_max, listing, **options)
    first = next(chunks)
    shapes = {name: arr.shape[1:] for name, arr in first[2].items()}     # every file's rows must match these
    specs = {name: (np.dtype(np.float32), (len(seeds),) + shape) for name, shape in shapes.items()}
    specs["seeds"] = (np.dtype(np.int64), (len(seeds),))
    label_dim = shapes["labels"][0] if "labels" in shapes else 0
    if label_dim:
        specs["labels"] = (np.dtype(np.int64), (len(seeds),))
    meta = _with(_with(meta, "sampler", "sigma_max", sigma_max), "teacher", "label_dim", label_dim)
    with stream_pairset(out_path, specs, meta) as out:
        out["seeds"][:] = seeds
        for path, rows, arrays in chain([first], chunks):
            if arrays.keys() != shapes.keys():
                raise PairSetError(f"{path}: has {sorted(arrays)}, but {first[0]} has {sorted(shapes)} "
                                   "(conditional and unconditional files mixed)")
            for name, arr in arrays.items():
                if arr.shape[1:] != shapes[name]:
                    raise PairSetError(f"{path}: {name} rows of shape {list(arr.shape[1:])}, expected "
                                       f"{list(shapes[name])} like {first[0]}")
                out[name][rows] = _class_indices(arr, path) if name == "labels" else arr
        meta["source"] = {"format": fmt, "path": str(source), **options, **listing.summary(), "seeds": SEEDS[fmt]}
    return open_pairset(out_path)
