"""rederive: after every build of the store, `rederive.count` of its seeds (drawn with `rederive.seed`) are
sampled again with the teacher file and sampler the store recorded (kdm.sampling.rederive), and x_T, labels and
x_0 compared with the store's: bitwise, or within `rederive.tolerance`. A mismatch, or a teacher file whose
sha256 is not the one the pairs recorded, fails the stage naming the seeds, and no report is written.

Only for stores the pairs stage sampled (the params check refuses `rederive` for imported pairs, which record no
teacher that made them).

Writes results/<exp>/rederive.json: the seeds compared and the largest difference of each array.
"""
from __future__ import annotations

import logging

from kdm.io import write_json
from kdm.pairset import open_pairset
from kdm.sampling import rederive

log = logging.getLogger("kdm.rederive")


def run(stage, P):
    R, store = P["rederive"], open_pairset(stage.deps.store)
    if R["count"] > len(store):
        raise ValueError(f"rederive.count: {R['count']} exceeds the store's {len(store)} pairs; expected at most that")
    tolerance = R.get("tolerance", 0.0)
    ok, lines, largest = rederive(store, R["count"], R["seed"], tolerance=tolerance)
    for line in lines:
        log.info("%s: %s", stage.deps.store, line)
    if not ok:
        raise ValueError(f"{stage.deps.store}: re-derived pairs differ from the store's (rederive.count "
                         f"{R['count']}, seed {R['seed']}, tolerance {tolerance:g}): " + "; ".join(lines))
    write_json(stage.metrics.report, {"pairs": len(store), "rederived": R["count"], "seed": R["seed"],
                                      "tolerance": tolerance, "largest_difference": largest, "report": lines})
