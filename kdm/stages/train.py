"""train: fit one student (kdm or kd) on the pair store."""
from __future__ import annotations

import time

import torch

from kdm import plots
from kdm.io import fingerprint
from kdm.pairset import open_pairset
from kdm.students import Adversary, rec_loss
from kdm.training import build, device, rank_batch, ranks, train_loop, write_run


def student_kwargs(model: str, p: dict, data_shape, x_T_scale: float, label_dim: int) -> dict:
    kwargs = dict(data_shape=list(data_shape), net=p["net"], x_T_scale=x_T_scale, label_dim=label_dim)
    if model == "kdm":
        kwargs.update(latent_dim=p["latent_dim"], operator=p["operator"])
        if p["net"]["kind"] == "unet":
            kwargs["latent_channels"] = p["latent_channels"]
    return kwargs


def setup(model: str, p: dict, store, seed: int, on):
    """A student ready to train on `store`: (net, its kwargs, batch_losses(gen), companions).
    The train stage runs it to the end; the benchmark times a few of its steps."""
    x0_all, xT_all = store["x0"], store["xT"]
    labels_all = store.arrays.get("labels")
    shape = x0_all.shape[1:]
    kwargs = student_kwargs(model, p, shape, store.meta["sampler"]["sigma_max"], store.meta["teacher"]["label_dim"])
    net = build(model, kwargs, seed=seed)
    rec = rec_loss(p["rec_loss"])
    batch = rank_batch(p["batch"], f"{model}.batch")     # this process's share (torchrun: of WORLD_SIZE)
    extra, companions = {}, {}
    if model == "kdm":
        extra["latent_noise"] = p["latent_noise"]
        if p.get("adversary"):      # the discriminator sees images: (channels, resolution, resolution)
            extra["adversary"] = companions["adversary"] = Adversary(
                shape[0], shape[-1], p["adversary"]["widths"], p["lr"], p["betas"], seed=seed + 1)

    def batch_losses(gen):
        idx = batch_indices(len(store), batch, gen)
        x0, xT = torch.from_numpy(x0_all[idx]).to(on), torch.from_numpy(xT_all[idx]).to(on)
        labels = None if labels_all is None else torch.from_numpy(labels_all[idx]).to(on)
        return net.losses(x0, xT, gen, rec=rec, labels=labels, **extra)
    return net, kwargs, batch_losses, companions


def batch_indices(n: int, batch: int, gen: torch.Generator):
    """A training batch's rows: uniform with replacement, sorted so memory-mapped reads go in file order."""
    return torch.randint(n, (batch,), generator=gen).sort().values.numpy()


def run(stage, P):
    model, seed = stage.args["model"], stage.args["seed"]
    p = P[model]
    (store_dir,) = stage.deps
    store = open_pairset(store_dir)
    on = device()
    net, kwargs, batch_losses, companions = setup(model, p, store, seed, on)
    started = time.perf_counter()
    ema, rows = train_loop(net, batch_losses, p.get("loss_weights", {}), p, seed=seed,
                           grad_clip=p["grad_clip"], desc=stage.name, checkpoint=stage.scratch_path,
                           run_id=fingerprint(P, seed, store.manifest["arrays"]), companions=companions, on=on)
    if ranks()[0]:
        return                  # rank 0 writes every output
    if model == "kdm":
        plots.spectrum(ema.C.matrix().detach(), stage.plots[2], title=f"{stage.name}: eigenvalues of C")
    write_run(stage, model, kwargs, ema, store["x0"].shape[1:], rows,
              {**P, "seed": seed, "store": store.manifest["arrays"]}, started)
