"""store: gather the pair shards into one memory-mappable, hash-checked store.

Every shard must come from the current teacher and sampler settings, and together hold exactly the
configured seed range: pairs from another configuration are refused, naming the shard and the key.
"""
from __future__ import annotations

import logging

from kdm.pairset import gather
from kdm.stages.pairs import pairs_meta

log = logging.getLogger("kdm.store")


def run(stage, P):
    *shards, model_pt = stage.deps
    (out,) = stage.outs
    start = P["pairs"]["seed_start"]
    store = gather(shards, out, expect_meta=pairs_meta(model_pt, P), expect_seeds=(start, start + P["pairs"]["count"]))
    log.info("store %s: %d pairs, seeds %s, arrays %s", out, len(store), store.manifest["seed_range"],
             {k: v["shape"] for k, v in store.manifest["arrays"].items()})
