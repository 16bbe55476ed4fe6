"""curve: a student's EMA snapshots (snapshots.every) measured against training iterations, on the first
snapshots.samples of the teacher's evaluation samples (their noise and requested labels) - fewer samples than the
evaluate stage, so the numbers are a curve to look at, not the table's. The KDM authors pick their best checkpoint by
such a test-metric curve; here the table always reports the final model (the evaluate stage)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kdm import datasets, plots
from kdm.device import device
from kdm.io import atomic_path, read_json
from kdm.metrics import Quality
from kdm.models import load_model
from kdm.pairset import open_pairset
from kdm.sampling import one_step, requested_labels

log = logging.getLogger("kdm.curve")


def run(stage, P):
    ev, n = P["evaluate"], P["snapshots"]["samples"]
    torch.set_grad_enabled(False)
    quality = Quality(datasets.make(P["data"]), ev, stage.deps)
    net = load_model(stage.deps.model, to=device())
    teacher = open_pairset(stage.deps.teacher_samples)
    xT, labels = torch.from_numpy(np.asarray(teacher["xT"][:n])), requested_labels(teacher.arrays)
    labels = None if labels is None else labels[:n]
    snapshots = Path(stage.deps.snapshots)
    rows = []
    for entry in read_json(snapshots / "index.json"):
        net.load_state_dict(torch.load(snapshots / entry["file"], map_location="cpu", weights_only=True)["state_dict"])
        measured = quality(one_step(net, xT, labels, ev["batch"]), labels)
        rows.append({"step": entry["iteration"], "samples": n,
                     **{k: v for k, v in measured.items() if not isinstance(v, str)}})
        log.info("%s: iteration %d: %s", stage.name, entry["iteration"], rows[-1])
    table = pd.DataFrame(rows, columns=["step", "samples"] if not rows else None)
    with atomic_path(stage.plots.csv) as tmp:
        table.to_csv(tmp, index=False)
    run_name = f"{stage.args['model']}-s{stage.args['seed']}"
    plots.quality_curve(table, stage.plots.png, f"{stage.args['exp']} {run_name}: EMA snapshots, {n} samples each")
