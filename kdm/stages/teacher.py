"""teacher: train an EDM-preconditioned denoiser on the experiment's data with the EDM loss."""
from __future__ import annotations

import time

from kdm import datasets
from kdm.edm import edm_loss
from kdm.io import fingerprint
from kdm.training import build, device, train_loop, write_run


def run(stage, P):
    data, t = datasets.make(P["data"]), P["teacher"]
    kwargs = dict(data_shape=list(data.shape), net=t["net"], sigma_data=t["sigma_data"], label_dim=data.label_dim)
    net, on = build("teacher", kwargs, seed=t["seed"]), device()

    def batch_losses(gen):
        x0, labels = data.sample(t["batch"], gen)
        labels = None if labels is None else labels.to(on)
        return {"edm": edm_loss(net, x0.to(on), gen, t["P_mean"], t["P_std"], labels)}

    started = time.perf_counter()
    ema, rows = train_loop(net, batch_losses, {}, t, seed=t["seed"], desc=stage.name,
                           checkpoint=stage.scratch_path, run_id=fingerprint(P), on=on)
    write_run(stage, "teacher", kwargs, ema, data.shape, rows, P, started)
