"""store: gather the pair shards into one memory-mappable, hash-checked store, or import a published pair set.

Every shard must come from the current teacher and sampler settings, and together hold exactly the
configured seed range: pairs from another configuration are refused, naming the shard and the key.
Imported pairs (pairs.source: import) must fit the teacher the students are evaluated beside: its sample
shape and label_dim, and sampler.sigma_max (what training and evaluation read from the store's meta).
"""
from __future__ import annotations

import logging
from pathlib import Path

from kdm.config import imported
from kdm.io import atomic_path
from kdm.pairimport import import_pairs
from kdm.models import load_model
from kdm.pairset import PairSetError, gather
from kdm.sampling import pairs_meta, teacher_identity

log = logging.getLogger("kdm.store")


def run(stage, P):
    model_pt, out = stage.deps.teacher, stage.outs.store
    if imported(P["pairs"]):
        store = import_store(model_pt, P, out)
    else:
        start = P["pairs"]["seed_start"]
        store = gather(stage.deps.shards, out, expect_meta=pairs_meta(model_pt, P),
                       expect_seeds=(start, start + P["pairs"]["count"]))
    log.info("store %s: %d pairs, seeds %s, arrays %s", out, len(store), store.manifest["seed_range"],
             {k: v["shape"] for k, v in store.manifest["arrays"].items()})


def import_store(model_pt, P, out):
    pairs, teacher = P["pairs"], load_model(model_pt)
    source = Path(pairs["path"])
    if not source.exists():
        raise FileNotFoundError(f"pairs.path: {source} does not exist; expected a {pairs['format']} pair set")
    meta = {"teacher": teacher_identity(model_pt, teacher), "sampler": P["sampler"]}
    with atomic_path(out) as tmp:       # checked before it becomes the store
        try:
            store = import_pairs(pairs["format"], source, tmp, pairs["sigma_max"], meta, **pairs.get("options", {}))
        except PairSetError as e:
            raise PairSetError(f"pairs.path: {e} (the teacher {model_pt} has label_dim {teacher.label_dim})") from None
        shape = tuple(store["x0"].shape[1:])
        if shape != tuple(teacher.data_shape):
            raise PairSetError(f"pairs.path: {source} holds samples of shape {shape}, but the teacher {model_pt} "
                               f"makes {tuple(teacher.data_shape)}; expected pairs of the experiment's teacher")
    return store
