"""pairs: run the teacher's deterministic Heun sampler on one shard's seed range."""
from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm import tqdm

from kdm.edm import edm_sampler, nfe, seed_noise
from kdm.io import sha256_file
from kdm.pairset import write_pairset
from kdm.training import load_model

log = logging.getLogger("kdm.pairs")


def shard_seeds(pairs: dict, shard: int) -> np.ndarray:
    n = pairs["count"] // pairs["shards"]
    start = pairs["seed_start"] + shard * n
    return np.arange(start, start + n, dtype=np.int64)


def teacher_identity(model_pt) -> dict:
    """What pairs record of their teacher; shards from different teachers never gather."""
    return {"path": str(model_pt), "sha256": sha256_file(model_pt)}


def sample(net, seeds: np.ndarray, sampler: dict, batch: int, desc: str):
    """(x_T, x_0) for `seeds`: x_T = sigma_max * eps(seed), x_0 = Heun ODE solution, in batches.

    A short last batch is padded to `batch` rows: CPU matmul kernels differ for very small batches
    (last-bit differences), so padding makes each pair independent of where the seed range ends and
    thus byte-identical for any shard count at a fixed batch size.
    """
    shape = net.data_shape
    xT = np.empty((len(seeds),) + shape, np.float32)
    x0 = np.empty_like(xT)
    for lo in tqdm(range(0, len(seeds), batch), desc=desc, mininterval=2.0):
        hi = min(lo + batch, len(seeds))
        noise = sampler["sigma_max"] * seed_noise(seeds[lo:hi], shape)
        padded = torch.cat([noise, noise[-1:].expand(batch - len(noise), *shape)])
        xT[lo:hi] = noise.numpy()
        x0[lo:hi] = edm_sampler(net, padded, sampler["steps"], sampler["sigma_min"], sampler["sigma_max"],
                                sampler["rho"])[:hi - lo].numpy()
    return xT, x0


def run(stage, P):
    shard, pairs, sampler = stage.args["shard"], P["pairs"], P["sampler"]
    if not 0 <= shard < pairs["shards"]:
        raise ValueError(f"shard {shard}: expected 0 <= shard < pairs.shards = {pairs['shards']}")
    (model_pt,), (out,) = stage.deps, stage.outs
    net = load_model(model_pt)
    seeds = shard_seeds(pairs, shard)
    log.info("shard %d: seeds %d..%d, %d NFE per pair, torch threads %d", shard, seeds[0], seeds[-1],
             nfe(sampler["steps"]), torch.get_num_threads())
    xT, x0 = sample(net, seeds, sampler, pairs["batch"], desc=stage.name)
    meta = {"teacher": teacher_identity(model_pt), "sampler": sampler, "batch": pairs["batch"]}
    write_pairset(out, {"x0": x0, "xT": xT, "seeds": seeds}, meta)
