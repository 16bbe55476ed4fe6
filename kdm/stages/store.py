"""store: gather the pair shards into one memory-mappable, hash-checked store."""
from __future__ import annotations

import logging

from kdm.pairset import gather

log = logging.getLogger("kdm.store")


def run(stage, P):
    (out,) = stage.outs
    store = gather(list(stage.deps), out, check="full")
    log.info("store %s: %d pairs, arrays %s", out, len(store),
             {k: v["shape"] for k, v in store.manifest["arrays"].items()})
