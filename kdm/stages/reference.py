"""reference: the Inception statistics (mu, sigma) that FID compares every model's samples with (EDM convention:
the training set's), computed once from the experiment's real images, or checked and copied from a
precomputed .npz (`evaluate.extractor.reference`, e.g. EDM's fid-refs/cifar10-32x32.npz)."""
from __future__ import annotations

import logging

from kdm import datasets
from kdm.metrics import FEATURES, inception_features, load_statistics, resolve_extractor, save_statistics, statistics

log = logging.getLogger("kdm.reference")

BATCH = 250         # images per Inception pass


def run(stage, P):
    extractor = P["extractor"]
    if "reference" in extractor:
        stats = load_statistics(extractor["reference"], "evaluate.extractor.reference")
        log.info("reference statistics from %s", extractor["reference"])
    else:
        real = datasets.make(P["data"]).real()
        log.info("reference statistics of %d real images", len(real))     # (opens the data set: errors first)
        _, weights = resolve_extractor(extractor, classifier_pt=None)
        stats = statistics(inception_features(real, weights, BATCH)[FEATURES])
    save_statistics(stage.outs.stats, stats)
