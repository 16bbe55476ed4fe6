"""classifier: train the image evaluator's feature extractor on the real data (not on any model's samples).

Its penultimate layer is the feature space of FID/KID/precision/recall for experiments without the
Inception network (kdm.metrics); its accuracy on a held-out share of the real images is reported,
and it scores conditional samples against the labels they were asked for (class_acc).
"""
from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F

from kdm import datasets
from kdm.device import device
from kdm.io import write_json
from kdm.metrics import accuracy
from kdm.models import build
from kdm.provenance import fingerprint, provenance
from kdm.training import train_loop, write_run

log = logging.getLogger("kdm.classifier")


def run(stage, P):
    data, c = datasets.make(P["data"]), P["classifier"]
    train, heldout = data.split(c["holdout"], c["split_seed"])
    kwargs = dict(in_channels=data.shape[0], resolution=data.shape[-1], n_classes=data.n_classes,
                  width=c["width"], feature_dim=c["feature_dim"])
    net, on = build("classifier", kwargs, seed=c["seed"]), device()
    x, y = data.x[train].to(on), data.y[train].to(on)

    def batch_losses(gen):
        idx = torch.randint(len(x), (c["batch"],), generator=gen)
        return {"cross_entropy": F.cross_entropy(net(x[idx]), y[idx])}

    started = time.perf_counter()
    ema, rows = train_loop(net, batch_losses, {}, c, seed=c["seed"], desc=stage.name,
                           checkpoint=stage.scratch_path, run_id=fingerprint(P), on=on)
    x, y = x.cpu(), y.cpu()
    ema.standardize(x)
    result = {"heldout_accuracy": accuracy(ema, data.x[heldout], data.y[heldout]),
              "train_accuracy": accuracy(ema, x, y), "heldout": len(heldout), "train": len(train)}
    log.info("%s: %s", stage.name, result)
    write_json(stage.metrics.metrics, {**result, "provenance": provenance()})
    write_run(stage, "classifier", kwargs, ema, data.shape, rows, P, started)
