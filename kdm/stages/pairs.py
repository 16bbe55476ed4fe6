"""pairs: run the teacher's deterministic Heun sampler on one shard's seed range."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import torch

from kdm.device import device
from kdm.edm import nfe
from kdm.models import load_model
from kdm.pairset import write_pairset
from kdm.provenance import fingerprint
from kdm.sampling import pairs_meta, sample

log = logging.getLogger("kdm.pairs")


def shard_seeds(pairs: dict, shard: int) -> np.ndarray:
    n = pairs["count"] // pairs["shards"]
    start = pairs["seed_start"] + shard * n
    return np.arange(start, start + n, dtype=np.int64)


def run(stage, P):
    shard, pairs, sampler = stage.args["shard"], P["pairs"], P["sampler"]
    model_pt = stage.deps.teacher
    net = load_model(model_pt, to=device())
    seeds = shard_seeds(pairs, shard)
    log.info("shard %d: seeds %d..%d, %d NFE per pair, torch threads %d", shard, seeds[0], seeds[-1],
             nfe(sampler["steps"]), torch.get_num_threads())
    meta = pairs_meta(model_pt, P, net)
    partial = stage.scratch_path
    arrays = sample(net, seeds, sampler, pairs["batch"], desc=stage.name, partial=partial,
                    run_id=fingerprint(meta, int(seeds[0]), len(seeds), device().type),
                    precision=pairs.get("precision", "fp32"))
    write_pairset(stage.outs.shard, arrays, meta)
    if partial:
        shutil.rmtree(partial)
