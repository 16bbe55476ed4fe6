"""teacher: train an EDM-preconditioned denoiser on the experiment's data with the EDM loss (source: train),
or convert a real one once (source: edm-pickle or diffusers, kdm/teachers.py)."""
from __future__ import annotations

import time

from kdm import datasets, teachers
from kdm.device import device, ranks
from kdm.models import ARCHS
from kdm.provenance import fingerprint
from kdm.training import teacher_setup, train_loop, write_run


def run(stage, P):
    source = P["teacher"].get("source", "train")
    (train if source == "train" else load)(stage, P)


def train(stage, P):
    data, t, on = datasets.make(P["data"]), P["teacher"], device()
    net, kwargs, batch_losses = teacher_setup(t, data, on)
    started = time.perf_counter()
    ema, rows = train_loop(net, batch_losses, {}, t, seed=t["seed"], desc=stage.name,
                           checkpoint=stage.scratch_path, run_id=fingerprint(P), on=on)
    if ranks()[0]:
        return                  # rank 0 writes every output
    write_run(stage, "teacher", kwargs, ema, data.shape, rows, P, started)


def load(stage, P):
    started, t = time.perf_counter(), P["teacher"]
    if t["source"] == "edm-pickle":
        got = teachers.convert_edm_pickle(t["path"], t.get("sha256"), t.get("trust_unpinned", False), t["edm_source"])
    else:
        got = teachers.convert_diffusers(t["path"])
    net = ARCHS[got.arch](**got.kwargs)
    try:
        net.load_state_dict(got.state)
    except RuntimeError as e:
        raise ValueError(f"teacher.path: {t['path']}: its weights do not fit the network its config describes "
                         f"({e})") from None
    data = datasets.make(P["data"])
    if tuple(got.data_shape) != tuple(data.shape) or net.label_dim != data.label_dim:
        raise ValueError(f"teacher.path: {t['path']} makes samples of shape {tuple(got.data_shape)} with "
                         f"{net.label_dim} classes, but data ({P['data']['kind']}) has shape {tuple(data.shape)} "
                         f"and {data.label_dim} classes")
    write_run(stage, got.arch, got.kwargs, net, data.shape, [], P, started,
              source={"kind": t["source"], "path": str(t["path"]), "sha256": got.sha256})
