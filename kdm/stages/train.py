"""train: fit one student (kdm or kd) on the pair store, keeping EMA snapshots every snapshots.every iterations."""
from __future__ import annotations

import time
from pathlib import Path

from kdm import plots
from kdm.device import device, ranks
from kdm.pairset import open_pairset
from kdm.provenance import fingerprint
from kdm.training import finish_snapshots, student_setup, train_loop, write_run


def run(stage, P):
    model, seed = stage.args["model"], stage.args["seed"]
    p = P[model]
    store = open_pairset(stage.deps.store)
    on = device()
    net, kwargs, batch_losses, companions = student_setup(model, p, store, seed, on)
    # snapshots are kept beside the checkpoint while the run goes on (a killed run resumes with them)
    partial = Path(stage.outs.snapshots.rstrip("/")).with_name(".snapshots.partial")
    started = time.perf_counter()
    ema, rows = train_loop(net, batch_losses, p.get("loss_weights", {}), p, seed=seed,
                           grad_clip=p["grad_clip"], desc=stage.name, checkpoint=stage.scratch_path,
                           run_id=fingerprint(P, seed, store.manifest["arrays"]), companions=companions, on=on,
                           snapshots=partial, snapshot_every=P["every"], device_generator=True)
    if ranks()[0]:
        return                  # rank 0 writes every output
    finish_snapshots(partial, stage.outs.snapshots)
    if model == "kdm":
        plots.spectrum(ema.C.matrix().detach(), stage.plots.spectrum, title=f"{stage.name}: eigenvalues of C")
    write_run(stage, model, kwargs, ema, store["x0"].shape[1:], rows,
              {**P, "seed": seed, "store": store.manifest["arrays"]}, started)
