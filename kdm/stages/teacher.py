"""teacher: train an EDM-preconditioned denoiser on the experiment's data with the EDM loss."""
from __future__ import annotations

from kdm import datasets
from kdm.edm import edm_loss
from kdm.io import fingerprint
from kdm.training import build, train_loop, write_run


def run(stage, P):
    data, t = datasets.make(P["data"]), P["teacher"]
    kwargs = dict(dim=data.shape[0], hidden=t["net"]["hidden"], layers=t["net"]["layers"],
                  emb_dim=t["emb_dim"], emb_scale=t["emb_scale"], sigma_data=t["sigma_data"])
    net = build("teacher", kwargs, seed=t["seed"])

    def batch_losses(gen):
        return {"edm": edm_loss(net, data.sample(t["batch"], gen), gen, t["P_mean"], t["P_std"])}

    ema, rows = train_loop(net, batch_losses, {}, t, seed=t["seed"], desc=stage.name,
                           checkpoint=stage.scratch_path, run_id=fingerprint(P))
    write_run(stage, "teacher", kwargs, ema, data.shape, rows, P)
