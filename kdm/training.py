"""Building, training, saving and loading models.

A saved model is a state dict (EMA weights) plus the JSON-able arguments that rebuild its module, so
it loads with `torch.load(weights_only=True)` and no pickled code.
"""
from __future__ import annotations

import copy
import csv
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from kdm.edm import EDMPrecond
from kdm.fidelity import ImageClassifier
from kdm.io import atomic_path
from kdm.nets import DenoiserMLP, unet_args
from kdm.students import KoopmanStudent, OneStepStudent
from kdm.teachers import DiffusersDenoiser
from kdm.unet import UNETS

log = logging.getLogger("kdm.train")


def _teacher(data_shape, net: dict, sigma_data: float, label_dim: int = 0):
    """EDM preconditioning around an MLP denoiser (vector data) or a UNet (images: kind unet, or songunet as in
    EDM's own networks, converted by kdm.teachers)."""
    if net["kind"] == "mlp":
        if len(data_shape) != 1 or label_dim:
            raise ValueError(f"teacher.net: an mlp teacher takes unconditional vector data, got shape {data_shape}")
        model = DenoiserMLP(data_shape[0], net["hidden"], net["layers"], net["emb_dim"], net["emb_scale"])
    else:
        model = UNETS[net["kind"]](data_shape[1], data_shape[0], data_shape[0], label_dim=label_dim,
                                    **unet_args(net))
    return EDMPrecond(model, sigma_data, label_dim)


ARCHS = {"teacher": _teacher, "diffusers": DiffusersDenoiser, "kdm": KoopmanStudent, "kd": OneStepStudent,
         "classifier": ImageClassifier}


def device() -> torch.device:
    """Where stages compute: CUDA when there is a GPU, else the CPU; KDM_DEVICE=cpu|cuda overrides.
    Random draws stay on CPU generators, so the same params give the same bytes on CPU."""
    name = os.environ.get("KDM_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") or (name == "cuda" and not torch.cuda.is_available()):
        raise ValueError(f"KDM_DEVICE={name!r}: expected 'cpu', or 'cuda' on a machine with a CUDA GPU")
    return torch.device(name)


def build(arch: str, kwargs: dict, seed: int) -> torch.nn.Module:
    """The module for `arch`, its initial weights a pure function of `seed`."""
    torch.manual_seed(seed)
    return ARCHS[arch](**kwargs)


def save_model(path, arch: str, kwargs: dict, module: torch.nn.Module, data_shape) -> None:
    with atomic_path(path) as tmp:
        torch.save({"arch": arch, "kwargs": kwargs, "data_shape": list(data_shape),
                    "state_dict": module.state_dict()}, tmp)


def load_model(path, to: torch.device | str = "cpu") -> torch.nn.Module:
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
    return module.eval().requires_grad_(False).to(to)


def adam(parameters, lr: float, betas) -> torch.optim.Adam:
    """Adam with its multi-tensor implementation, which torch picks only on GPUs: on the CPU it gives
    bitwise the same steps as the per-parameter loop, about 10% faster for the digits UNets."""
    return torch.optim.Adam(parameters, lr=lr, betas=tuple(betas), foreach=True)


class EMA:
    """Exponential moving average of a module's parameters (buffers are copied)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, module: torch.nn.Module):
        # one foreach call instead of a Python loop over the parameters: the same per-tensor kernels
        torch._foreach_lerp_(list(self.module.parameters()), list(module.parameters()), 1 - self.decay)
        for e, b in zip(self.module.buffers(), module.buffers()):
            e.copy_(b)


class NonFiniteLoss(RuntimeError):
    """The loss stayed NaN/inf for too many consecutive steps."""


def _load_checkpoint(path: Path | None, want: str):
    if path is None or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a checkpoint cut short by a kill is not trusted
        log.warning("ignoring unreadable checkpoint %s (%s: %s); starting from scratch", path, type(e).__name__, e)
        return None
    if state.get("run_id") != want:
        log.warning("ignoring checkpoint %s: it was made with other params or data; starting from scratch", path)
        return None
    return state


def train_loop(model: torch.nn.Module, batch_losses: Callable[[torch.Generator], dict], weights: dict,
               optim: dict, seed: int, grad_clip: float = 0.0, desc: str = "train",
               checkpoint: Path | None = None, run_id: str = "", companions: dict | None = None,
               on: torch.device | str = "cpu"):
    """Adam on sum(weights[k] * loss_k), lr constant or cosine-decayed; returns (EMA module on the CPU, log rows).

    The model (and companions) train on device `on`; `batch_losses` must hand it batches there.

    Terms without a gradient (e.g. a discriminator's own loss, stepped by its `companion`) are logged,
    not summed. `companions` (name -> object with state_dict/load_state_dict, e.g. kdm.students.Adversary)
    are trained inside `batch_losses` and saved in, and restored from, the checkpoints.

    Non-finite gradient entries are zeroed, as in the authors' code; a loss that stays non-finite for
    `optim["max_nonfinite_steps"]` steps raises NonFiniteLoss, leaving the last good checkpoint.
    `batch_losses` draws its batch and any noise from the generator it is given, so the run is a pure
    function of `seed`. Every `optim["checkpoint_every"]` steps the model, EMA, optimiser and RNG
    states go to `checkpoint`; a later call with the same `run_id` (kdm.io.fingerprint of what the run
    depends on) resumes there and ends with bitwise the same weights as an uninterrupted run.
    """
    gen = torch.Generator().manual_seed(seed)
    run_id = f"{run_id}/{torch.device(on).type}"      # a CPU checkpoint never resumes on a GPU, nor the reverse
    model.to(on)
    for companion in (companions or {}).values():
        companion.to(on)
    opt = adam(model.parameters(), optim["lr"], optim["betas"])
    ema = EMA(model, optim["ema"])
    every, iters = optim.get("log_every", 100), optim["iterations"]
    ckpt_every, max_bad = optim.get("checkpoint_every", 0), optim.get("max_nonfinite_steps", 100)
    rows, start, bad = [], 0, 0
    state = _load_checkpoint(checkpoint, run_id)
    if state:
        model.load_state_dict(state["model"])
        ema.module.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        for name, companion in (companions or {}).items():
            companion.load_state_dict(state["companions"][name])
        rows, start = state["rows"], state["iteration"]
        log.info("%s: resumed from checkpoint %s at iteration %d", desc, checkpoint, start)
    model.train()
    bar = tqdm(range(start, iters), desc=desc, mininterval=2.0, miniters=1, initial=start, total=iters)
    for it in bar:
        if optim["lr_schedule"] == "cosine":
            for group in opt.param_groups:
                group["lr"] = optim["lr"] * 0.5 * (1 + math.cos(math.pi * it / iters))
        terms = batch_losses(gen)
        loss = sum(weights.get(k, 1.0) * v for k, v in terms.items() if v.requires_grad)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in model.parameters():
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        ema.update(model)
        bad = 0 if torch.isfinite(loss) else bad + 1
        if bad >= max_bad:
            kept = f"the last good checkpoint is kept at {checkpoint}" if checkpoint and checkpoint.is_file() \
                else "no checkpoint had been written"
            raise NonFiniteLoss(f"{desc}: loss was non-finite for {bad} consecutive steps (up to iteration "
                                f"{it + 1}); {kept}. Lower the learning rate or check the data.")
        if it % every == 0 or it == iters - 1:
            row = {"step": it + 1, "loss": loss.item(), **{k: v.item() for k, v in terms.items()}}
            rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
            if it % (every * 10) == 0 or it == iters - 1:
                log.info("%s step %d/%d %s", desc, it + 1, iters,
                         " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))
        if checkpoint and ckpt_every and (it + 1) % ckpt_every == 0 and it + 1 < iters and bad == 0:
            with atomic_path(checkpoint) as tmp:
                torch.save({"run_id": run_id, "iteration": it + 1, "model": model.state_dict(),
                            "ema": ema.module.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                            "torch_rng": torch.get_rng_state(), "rows": rows,
                            "cuda_rng": torch.cuda.get_rng_state_all() if torch.device(on).type == "cuda" else None,
                            "companions": {k: c.state_dict() for k, c in (companions or {}).items()}}, tmp)
    return ema.module.cpu(), rows


def write_rows(path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["step", "loss"])   # none: nothing trained
        w.writeheader()
        w.writerows(rows)


def write_run(stage, arch: str, kwargs: dict, module, data_shape, rows: list[dict], resolved: dict,
              started: float, source: dict | None = None) -> None:
    """A training stage's outputs: model.pt, config.json (resolved params, provenance and the wall time
    since `started`, a time.perf_counter() value: a resumed run counts only its own part), train.csv, loss.png.
    A loaded model (no `rows`) records where it came from (`source`) instead of a training log."""
    seconds = time.perf_counter() - started
    from kdm.io import provenance, write_json
    from kdm.plots import loss_curve
    model_pt, config_json = stage.outs
    train_csv, loss_png = stage.plots[:2]
    write_rows(train_csv, rows)
    loss_curve(rows, loss_png, title=stage.name)
    write_json(config_json, {"stage": stage.name, "arch": arch, "kwargs": kwargs, "params": resolved,
                             "train_seconds": seconds, "provenance": provenance(),
                             **({"source": source} if source else {})})
    save_model(model_pt, arch, kwargs, module, data_shape)   # last: its presence marks the run complete
    if stage.scratch_path:
        stage.scratch_path.unlink(missing_ok=True)           # done: a later run starts afresh
