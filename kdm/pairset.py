"""The pair format: a directory of .npy arrays (x0, xT, seeds[, labels]) plus manifest.json.

Pair shards, the gathered store and the teacher's evaluation samples all use it. Arrays are plain
.npy so training memory-maps them; the manifest records counts, shapes, dtypes, the seed range, the
teacher and sampler settings and a sha256 per array, and `open_pairset` checks it on every open.
Beside the manifest, CARD.md says the same for people (kdm.pairset.card). Nothing here carries a timestamp,
so the same pairs written by the same commit give the same bytes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdm.edm import nfe
from kdm.io import atomic_path, sha256_file
from kdm.provenance import code_revision

FORMAT = "kdm-pairs/1"
REQUIRED = ("x0", "xT", "seeds")
EDGE = 1 << 20      # the fast check hashes this many bytes at each end of every array


def default_check() -> str:
    """'fast' (sizes, headers, hashes of both ends) unless KDM_VERIFY=full asks for every byte."""
    check = os.environ.get("KDM_VERIFY", "fast")
    if check not in ("fast", "full"):
        raise ValueError(f"KDM_VERIFY={check!r}: expected 'fast' or 'full'")
    return check


def edge_sha256(path: Path) -> str:
    """sha256 of the first and last EDGE bytes: catches a replaced header or a corrupted end cheaply."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        h.update(f.read(EDGE))
        if size > EDGE:
            f.seek(max(EDGE, size - EDGE))
            h.update(f.read())
    return h.hexdigest()


class PairSetError(ValueError):
    """A pair set is missing, corrupt or does not match what was expected."""


@dataclass
class PairSet:
    path: Path
    manifest: dict
    arrays: dict            # name -> read-only np.memmap

    def __len__(self):
        return self.manifest["count"]

    def __getitem__(self, name):
        return self.arrays[name]

    @property
    def meta(self) -> dict:
        return self.manifest["meta"]


def _describe(arr: np.ndarray) -> dict:
    return {"shape": list(arr.shape), "dtype": str(arr.dtype)}


def _require(path, names) -> None:
    missing = [k for k in REQUIRED if k not in names]
    if missing:
        raise ValueError(f"pair set {path}: missing arrays {missing}")


def write_pairset(path, arrays: dict, meta: dict) -> None:
    """Write arrays + manifest atomically: the directory appears complete or not at all."""
    _require(path, arrays)
    n = len(arrays["seeds"])
    with atomic_path(path) as tmp:
        tmp.mkdir()
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            if len(arr) != n:
                raise ValueError(f"pair set {path}: array {name} has {len(arr)} rows, expected {n}")
            np.save(tmp / f"{name}.npy", arr)
        _write_manifest(tmp, n, list(arrays), meta)


@contextlib.contextmanager
def stream_pairset(path, specs: dict, meta: dict):
    """Write a pair set block by block without holding it in RAM.

    Yields {name: writable .npy memmap} for `specs` {name: (dtype, shape)} in a temporary directory; when the
    block ends, the manifest is written with `meta` as it is then (so a caller may complete it while streaming,
    e.g. with hashes of what it read) and the directory appears at `path` at once, or not at all on error.
    """
    _require(path, specs)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        arrays = {name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
                  for name, (dtype, shape) in specs.items()}
        yield arrays
        for arr in arrays.values():
            arr.flush()
        arrays.clear()
        _write_manifest(tmp, specs["seeds"][1][0], list(specs), meta)


def _write_manifest(directory: Path, n: int, names, meta: dict) -> None:
    seeds = np.load(directory / "seeds.npy", mmap_mode="r")
    entries = {}
    for name in names:
        arr = np.load(directory / f"{name}.npy", mmap_mode="r")
        f = directory / f"{name}.npy"
        entries[name] = {**_describe(arr), "bytes": f.stat().st_size, "sha256": sha256_file(f),
                         "edge_sha256": edge_sha256(f)}
    manifest = {"format": FORMAT, "count": n,
                "seed_range": [int(seeds[0]), int(seeds[-1]) + 1] if n else [0, 0],
                "arrays": entries, "meta": meta, "written_by": code_revision()}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (directory / "CARD.md").write_text(card(manifest))


def card(manifest: dict) -> str:
    """CARD.md: what someone receiving the pair set needs in order to trust it - how its noise was drawn, the
    sampler, the teacher, seeds, precision, the commit that wrote it and how to check it - made from the
    manifest alone, so that it cannot drift from the pairs."""
    meta, arrays = manifest["meta"], manifest["arrays"]
    sampler, teacher, source = meta.get("sampler", {}), meta.get("teacher", {}), meta.get("source")
    lo, hi = manifest["seed_range"]
    shape = tuple(arrays["xT"]["shape"][1:])
    label_dim = teacher.get("label_dim", 0)
    lines = ["# Pair set card", "",
             f"{manifest['count']} pairs (x_T, x_0{', label' if 'labels' in arrays else ''}) for seeds {lo} to "
             f"{hi - 1}, format {manifest['format']}, written by kdm commit {manifest.get('written_by') or 'unknown'}.",
             ""]
    if source:
        lines += ["## Imported", "",
                  f"From a {source.get('format')} pair set at {source.get('path')}; what the import read and assumed: "
                  + "; ".join(f"{k} {v}" for k, v in source.items() if k not in ("format", "path")) + ".",
                  "The noise, sampler and teacher below are what the import was told, not proven: the teacher is the "
                  "experiment's (the one its students are evaluated beside). Check the pairs against a teacher with "
                  "`python -m kdm verify EXP --rederive N --teacher PATH --sha256 HASH`.", ""]
    lines += ["## Noise", "",
              f"For seed s, a CPU `torch.Generator` seeded with s mod 2^32 draws eps ~ N(0, I) of shape {shape}"
              + (f", then the class label, uniform over {label_dim} classes" if label_dim else "")
              + f"; x_T = sigma_max * eps with sigma_max {sampler.get('sigma_max')} (pure Gaussian noise, no other "
              "scaling). As EDM's generate.py on the CPU; it is drawn on the CPU whatever device sampled, so the "
              "same seed gives the same x_T everywhere (EDM's generate.py on CUDA draws other numbers).", "",
              "## Sampler", ""]
    if "steps" in sampler:
        lines.append(f"EDM's deterministic Heun sampler (Algorithm 1 with S_churn 0: no stochastic churn), "
                     f"{sampler['steps']} steps = {nfe(sampler['steps'])} network evaluations per pair, rho "
                     f"{sampler.get('rho')}, sigma from {sampler.get('sigma_max')} to {sampler.get('sigma_min')} then 0; "
                     f"precision {meta.get('precision', 'fp32')}"
                     + (f", batch {meta['batch']} (a short last batch padded to it, so a pair does not depend on "
                        "the shard layout)" if "batch" in meta else "") + ".")
    else:
        lines.append("Not recorded (an imported set: the source's own).")
    lines += ["", "## Teacher", "",
              f"{teacher.get('path')}, sha256 {teacher.get('sha256')}, label_dim {label_dim}.", "",
              "## Arrays", "", "| array | dtype | shape | sha256 |", "|---|---|---|---|"]
    lines += [f"| {name} | {a['dtype']} | {tuple(a['shape'])} | {a['sha256']} |" for name, a in arrays.items()]
    lines += ["", "## Check", "",
              "`python -m kdm verify EXP` checks every byte against manifest.json; `python -m kdm verify EXP "
              "--rederive N` re-samples N random seeds with the teacher above and compares x_T, labels and x_0 "
              "(bitwise on the device and precision that made them).", ""]
    return "\n".join(lines)


def open_pairset(path, check: str | None = None, expect_meta: dict | None = None) -> PairSet:
    """Open and verify a pair set.

    check="fast" compares every array's header (shape, dtype), file size and the hash of its first
    and last MiB with the manifest; check="full" recomputes each whole sha256; None = default_check().
    `expect_meta` entries must equal the manifest's meta (e.g. the teacher and sampler settings the
    caller was configured with).
    """
    check = check or default_check()
    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise PairSetError(f"{mpath}: missing; expected a pair set written by the pairs or store stage")
    try:
        manifest = json.loads(mpath.read_text())
        entries, count = manifest["arrays"], manifest["count"]
        for name, entry in entries.items():
            missing = {"shape", "dtype", "bytes", "sha256", "edge_sha256"} - set(entry)
            if missing:
                raise KeyError(f"arrays.{name} lacks {sorted(missing)}")
        if not isinstance(manifest["meta"], dict) or len(manifest["seed_range"]) != 2:
            raise TypeError("meta must be a mapping and seed_range a pair")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise PairSetError(f"{mpath}: corrupt manifest ({e})") from None
    if manifest.get("format") != FORMAT:
        raise PairSetError(f"{mpath}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    for name in REQUIRED:
        if name not in entries:
            raise PairSetError(f"{mpath}: no entry for required array {name!r}")
    arrays = {}
    for name, entry in entries.items():
        f = path / f"{name}.npy"
        if not f.is_file():
            raise PairSetError(f"{f}: missing; the manifest lists it")
        if f.stat().st_size != entry["bytes"]:
            raise PairSetError(f"{f}: {f.stat().st_size} bytes, manifest says {entry['bytes']} (truncated or replaced)")
        try:
            arr = np.load(f, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise PairSetError(f"{f}: not a readable .npy array ({e})") from None
        if _describe(arr) != {"shape": entry["shape"], "dtype": entry["dtype"]}:
            raise PairSetError(f"{f}: {_describe(arr)}, manifest says shape {entry['shape']} dtype {entry['dtype']}")
        if len(arr) != count:
            raise PairSetError(f"{f}: {len(arr)} rows, manifest count is {count}")
        if check == "full" and sha256_file(f) != entry["sha256"]:
            raise PairSetError(f"{f}: sha256 differs from the manifest (the file is corrupt or was changed)")
        if check == "fast" and edge_sha256(f) != entry["edge_sha256"]:
            raise PairSetError(f"{f}: the hash of its first/last MiB differs from the manifest (corrupt or changed)")
        arrays[name] = arr
    for key, want in (expect_meta or {}).items():
        have = manifest["meta"].get(key)
        if have != want:
            raise PairSetError(f"{mpath}: meta.{key} is {have!r}, expected {want!r} "
                               f"(pairs from a different {key}; re-run the pairs stage)")
    return PairSet(path, manifest, arrays)


def gather(sources: list, path, expect_meta: dict | None = None, expect_seeds: tuple | None = None) -> PairSet:
    """Concatenate pair sets with identical meta and contiguous seeds into one, streaming row blocks."""
    parts = [open_pairset(p, expect_meta=expect_meta) for p in sources]
    if not parts:
        raise PairSetError(f"{path}: no shards to gather")
    first = parts[0]
    for prev, p in zip(parts, parts[1:]):
        if p.meta != first.meta:
            diff = sorted(k for k in set(p.meta) | set(first.meta) if p.meta.get(k) != first.meta.get(k))
            raise PairSetError(f"{p.path}: meta differs from {first.path} in {diff}; shards must come from "
                               "the same teacher and sampler")
        if set(p.arrays) != set(first.arrays):
            raise PairSetError(f"{p.path}: arrays {sorted(p.arrays)} differ from {first.path}'s {sorted(first.arrays)}")
        if p.manifest["seed_range"][0] != prev.manifest["seed_range"][1]:
            raise PairSetError(f"{p.path}: seeds start at {p.manifest['seed_range'][0]}, expected "
                               f"{prev.manifest['seed_range'][1]} (shards must be contiguous and in order)")
    total = sum(len(p) for p in parts)
    if total == 0:
        raise PairSetError(f"{path}: the shards hold no pairs")
    seeds = [first.manifest["seed_range"][0], parts[-1].manifest["seed_range"][1]]
    if expect_seeds is not None and seeds != list(expect_seeds):
        raise PairSetError(f"{path}: the shards hold seeds {seeds[0]}..{seeds[1] - 1} ({total} pairs), expected "
                           f"{expect_seeds[0]}..{expect_seeds[1] - 1} from the pairs params")
    specs = {name: (arr.dtype, (total,) + arr.shape[1:]) for name, arr in first.arrays.items()}
    with stream_pairset(path, specs, first.meta) as out:
        for name, arr in out.items():
            row = 0
            for p in parts:
                arr[row:row + len(p)] = p[name]
                row += len(p)
    return open_pairset(path)
