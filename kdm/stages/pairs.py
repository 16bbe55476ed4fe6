"""pairs: run the teacher's deterministic Heun sampler on one shard's seed range."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kdm.edm import edm_sampler, nfe, seed_labels, seed_noise
from kdm.io import atomic_path, fingerprint, sha256_file
from kdm.pairset import write_pairset
from kdm.training import device, load_model

log = logging.getLogger("kdm.pairs")


def shard_seeds(pairs: dict, shard: int) -> np.ndarray:
    n = pairs["count"] // pairs["shards"]
    start = pairs["seed_start"] + shard * n
    return np.arange(start, start + n, dtype=np.int64)


def teacher_identity(model_pt, net=None) -> dict:
    """What pairs record of their teacher (shards from different teachers never gather), and whether
    it is class-conditional (label_dim > 0: the pairs carry labels). `net`: the teacher, if already loaded."""
    net = load_model(model_pt) if net is None else net
    return {"path": str(model_pt), "sha256": sha256_file(model_pt), "label_dim": net.label_dim}


def pairs_meta(model_pt, P, net=None) -> dict:
    """What a pair set records of how it was made; the store checks every shard against it."""
    return {"teacher": teacher_identity(model_pt, net), "sampler": P["sampler"], "batch": P["pairs"]["batch"]}


def sample(net, seeds: np.ndarray, sampler: dict, batch: int, desc: str, partial: Path | None = None,
           run_id: str = "") -> dict:
    """Pair arrays for `seeds`: x_T = sigma_max * eps(seed), x_0 = Heun ODE solution, in batches; for a
    conditional teacher also the class label each seed requests (kdm.edm.seed_labels).

    A short last batch is padded to `batch` rows: CPU matmul kernels differ for very small batches
    (last-bit differences), so padding makes each pair independent of where the seed range ends and
    thus byte-identical for any shard count at a fixed batch size. With `partial` (a directory of its
    own), each finished batch is saved there and a rerun with the same `run_id` reuses them.
    """
    shape, on = net.data_shape, next(net.parameters()).device
    xT = np.empty((len(seeds),) + shape, np.float32)
    x0 = np.empty_like(xT)
    labels = seed_labels(seeds, net.label_dim) if net.label_dim else None
    done = _resume(partial, run_id) if partial else set()
    for lo in tqdm(range(0, len(seeds), batch), desc=desc, mininterval=2.0):
        hi = min(lo + batch, len(seeds))
        noise = sampler["sigma_max"] * seed_noise(seeds[lo:hi], shape)
        xT[lo:hi] = noise.numpy()
        if lo in done:
            x0[lo:hi] = np.load(partial / f"{lo:012d}.npy")
            continue
        padded = torch.cat([noise, noise[-1:].expand(batch - len(noise), *shape)])
        y = None if labels is None else torch.from_numpy(np.pad(labels[lo:hi], (0, batch - (hi - lo)), mode="edge"))
        y = None if y is None else y.to(on)
        x0[lo:hi] = edm_sampler(net, padded.to(on), sampler["steps"], sampler["sigma_min"], sampler["sigma_max"],
                                sampler["rho"], labels=y)[:hi - lo].cpu().numpy()
        if partial:
            with atomic_path(partial / f"{lo:012d}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, x0[lo:hi])
    if done:
        log.info("%s: resumed; %d of %d batches were already done", desc, len(done), -(-len(seeds) // batch))
    return {"x0": x0, "xT": xT, "seeds": seeds} | ({} if labels is None else {"labels": labels})


def _resume(partial: Path, run_id: str) -> set[int]:
    """Start offsets of the batches already saved in `partial` for this exact run; else start it clean."""
    if not partial.name.endswith(".partial"):
        raise ValueError(f"{partial}: a resume directory must be named *.partial")   # never clear anything else
    stamp = partial / "run_id"
    if stamp.is_file() and stamp.read_text() == run_id:
        return {int(f.stem) for f in partial.glob("[0-9]*.npy")}
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    stamp.write_text(run_id)
    return set()


def run(stage, P):
    shard, pairs, sampler = stage.args["shard"], P["pairs"], P["sampler"]
    (model_pt,), (out,) = stage.deps, stage.outs
    net = load_model(model_pt, to=device())
    seeds = shard_seeds(pairs, shard)
    log.info("shard %d: seeds %d..%d, %d NFE per pair, torch threads %d", shard, seeds[0], seeds[-1],
             nfe(sampler["steps"]), torch.get_num_threads())
    meta = pairs_meta(model_pt, P, net)
    partial = stage.scratch_path
    arrays = sample(net, seeds, sampler, pairs["batch"], desc=stage.name, partial=partial,
                    run_id=fingerprint(meta, int(seeds[0]), len(seeds), device().type))
    write_pairset(out, arrays, meta)
    if partial:
        shutil.rmtree(partial)
