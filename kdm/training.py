"""Building, training, saving and loading models.

A saved model is a state dict (EMA weights) plus the JSON-able arguments that rebuild its module, so
it loads with `torch.load(weights_only=True)` and no pickled code.
"""
from __future__ import annotations

import copy
import math
import csv
import logging
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from kdm.edm import EDMPrecond
from kdm.io import atomic_path
from kdm.nets import DenoiserMLP
from kdm.students import KoopmanStudent, OneStepStudent

log = logging.getLogger("kdm.train")


def _teacher(dim, hidden, layers, emb_dim, emb_scale, sigma_data):
    return EDMPrecond(DenoiserMLP(dim, hidden, layers, emb_dim, emb_scale), sigma_data)


ARCHS = {"teacher": _teacher, "kdm": KoopmanStudent, "kd": OneStepStudent}


def build(arch: str, kwargs: dict, seed: int) -> torch.nn.Module:
    """The module for `arch`, its initial weights a pure function of `seed`."""
    torch.manual_seed(seed)
    return ARCHS[arch](**kwargs)


def save_model(path, arch: str, kwargs: dict, module: torch.nn.Module, data_shape) -> None:
    with atomic_path(path) as tmp:
        torch.save({"arch": arch, "kwargs": kwargs, "data_shape": list(data_shape),
                    "state_dict": module.state_dict()}, tmp)


def load_model(path) -> torch.nn.Module:
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        module = ARCHS[ckpt["arch"]](**ckpt["kwargs"])
        module.load_state_dict(ckpt["state_dict"])
        module.data_shape = tuple(ckpt["data_shape"])
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; expected a model written by a train or teacher stage") from None
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise ValueError(f"{path}: not a loadable model checkpoint ({type(e).__name__}: {e})") from None
    return module.eval().requires_grad_(False)


class EMA:
    """Exponential moving average of a module's parameters (buffers are copied)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, module: torch.nn.Module):
        for e, p in zip(self.module.parameters(), module.parameters()):
            e.lerp_(p, 1 - self.decay)
        for e, b in zip(self.module.buffers(), module.buffers()):
            e.copy_(b)


def train_loop(model: torch.nn.Module, batch_losses: Callable[[torch.Generator], dict], weights: dict,
               optim: dict, seed: int, grad_clip: float = 0.0, desc: str = "train"):
    """Adam on sum(weights[k] * loss_k), lr constant or cosine-decayed; returns (EMA module, log rows).

    Non-finite gradient entries are zeroed, as in the authors' code. `batch_losses` draws its batch and
    any noise from the generator it is given, so the whole run is a pure function of `seed`.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=optim["lr"], betas=tuple(optim["betas"]))
    ema = EMA(model, optim["ema"])
    every = optim.get("log_every", 100)
    rows, iters = [], optim["iterations"]
    model.train()
    bar = tqdm(range(iters), desc=desc, mininterval=2.0, miniters=1)
    for it in bar:
        if optim["lr_schedule"] == "cosine":
            for group in opt.param_groups:
                group["lr"] = optim["lr"] * 0.5 * (1 + math.cos(math.pi * it / iters))
        terms = batch_losses(gen)
        loss = sum(weights.get(k, 1.0) * v for k, v in terms.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in model.parameters():
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        ema.update(model)
        if it % every == 0 or it == iters - 1:
            row = {"step": it + 1, "loss": loss.item(), **{k: v.item() for k, v in terms.items()}}
            rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
            if it % (every * 10) == 0 or it == iters - 1:
                log.info("%s step %d/%d %s", desc, it + 1, iters,
                         " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))
    return ema.module, rows


def write_rows(path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write_run(stage, arch: str, kwargs: dict, module, data_shape, rows: list[dict], resolved: dict) -> None:
    """A training stage's outputs: model.pt, config.json (resolved params + provenance), train.csv, loss.png."""
    from kdm.io import provenance, write_json
    from kdm.plots import loss_curve
    model_pt, config_json = stage.outs
    train_csv, loss_png = stage.plots
    write_rows(train_csv, rows)
    loss_curve(rows, loss_png, title=stage.name)
    write_json(config_json, {"stage": stage.name, "arch": arch, "kwargs": kwargs, "params": resolved,
                             "provenance": provenance()})
    save_model(model_pt, arch, kwargs, module, data_shape)   # last: its presence marks the run complete
