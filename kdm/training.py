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

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
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
    if name == "cuda" and "LOCAL_RANK" in os.environ:       # torchrun: one GPU per process
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def ranks() -> tuple[int, int]:
    """(this process's rank, the number of training processes): torchrun sets RANK and WORLD_SIZE; else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def rank_batch(batch: int, key: str) -> int:
    """This process's share of a training batch. Params give the global batch: under torchrun each of the
    WORLD_SIZE processes draws batch / WORLD_SIZE rows, so a step averages gradients over `batch` rows as
    in one process."""
    world = ranks()[1]
    if batch % world:
        raise ValueError(f"{key}: {batch} is not divisible by the {world} training processes (WORLD_SIZE); "
                         f"expected a multiple of {world}")
    return batch // world


def average_gradients(parameters) -> None:
    """Average gradients over the training processes (nothing to do in one): for modules stepped outside
    DDP, such as the adversary's discriminator, so that every rank keeps the same weights."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])        # one collective instead of one per tensor
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for g, f in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(f.view_as(g))


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


class _Step(nn.Module):
    """A training step's losses as the forward of a module that holds the model: DDP synchronises gradients
    of what runs inside its forward, and `batch_losses` reaches the model through its own methods (the
    students' model.losses), never through model.forward."""

    def __init__(self, model: nn.Module, batch_losses: Callable[[torch.Generator], dict]):
        super().__init__()
        self.model, self.batch_losses = model, batch_losses

    def forward(self, gen: torch.Generator) -> dict:
        return self.batch_losses(gen)


def _compile(model: nn.Module) -> None:
    """torch.compile the model's networks (its children with parameters; a leaf model itself) in place:
    Module.compile keeps the state dict's keys (no `_orig_mod.` prefix), and the students' training calls,
    which are not model.forward, run the compiled children."""
    for net in [c for c in model.children() if any(True for _ in c.parameters())] or [model]:
        net.compile()


def _seeds(seed: int, rank: int, world: int) -> tuple[int, int | None]:
    """Seeds of a rank's batch generator and of its global torch RNG (dropout). One process keeps `seed` and
    the RNG as the model's build left it, as before DDP existed; each of several ranks gets its own pair."""
    if world == 1:
        return seed, None
    batches, global_rng = np.random.SeedSequence([seed, rank]).generate_state(2)
    return int(batches), int(global_rng)


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
    not summed. `companions` (name -> object with to/state_dict/load_state_dict, e.g. kdm.students.Adversary)
    are trained inside `batch_losses` and saved in, and restored from, the checkpoints.

    Non-finite gradient entries are zeroed, as in the authors' code; a loss that stays non-finite for
    `optim["max_nonfinite_steps"]` steps raises NonFiniteLoss, leaving the last good checkpoint.
    `batch_losses` draws its batch and any noise from the generator it is given, so the run is a pure
    function of `seed`. Every `optim["checkpoint_every"]` steps the model, EMA, optimiser and RNG
    states go to `checkpoint`; a later call with the same `run_id` (kdm.io.fingerprint of what the run
    depends on) resumes there and ends with bitwise the same weights as an uninterrupted run.

    Speed options in `optim`, all off by default: `precision: bf16` runs `batch_losses` under bf16 autocast
    (weights, EMA, optimiser and the sum of the losses stay fp32); `channels_last` stores the model's (and
    companions') conv weights channels-last, so convolutions run in that layout; `compile` torch.compiles
    the model's networks in place (saved weights stay plain state dicts).

    Under torchrun (WORLD_SIZE > 1) every rank runs this loop: the model is wrapped in DDP (gradients
    averaged over ranks; companions average theirs with `average_gradients`), each rank draws its batches
    and noise from its own generator seeded by (seed, rank) - a different, still deterministic, run than
    one process's - and logs the mean of the ranks' losses; rank 0 alone writes checkpoints, holding every
    rank's RNG states, and all ranks resume from them. The run id includes the number of ranks.
    """
    on = torch.device(on)
    rank, world = ranks()
    batch_seed, global_seed = _seeds(seed, rank, world)
    gen = torch.Generator().manual_seed(batch_seed)
    # a CPU checkpoint never resumes on a GPU, nor the reverse; nor one of another number of ranks
    run_id = f"{run_id}/{on.type}/ranks={world}"
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        if on.type == "cuda":
            torch.cuda.set_device(on)
        dist.init_process_group("nccl" if on.type == "cuda" else "gloo")
    if world > 1:
        torch.manual_seed(global_seed)          # ranks draw different dropout masks
    bf16, channels_last = optim.get("precision", "fp32") == "bf16", optim.get("channels_last", False)
    model.to(on)
    for companion in (companions or {}).values():
        companion.to(on)
    if channels_last:
        for m in [model, *(companions or {}).values()]:
            m.to(memory_format=torch.channels_last)
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
        rng = state["rng"][rank]
        gen.set_state(rng["gen"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None:
            torch.cuda.set_rng_state(rng["cuda"], on)
        for name, companion in (companions or {}).items():
            companion.load_state_dict(state["companions"][name])
        rows, start = state["rows"], state["iteration"]
        log.info("%s: resumed from checkpoint %s at iteration %d", desc, checkpoint, start)
    if optim.get("compile"):
        _compile(model)                         # after the EMA's copy, which stays an eager module
    step = batch_losses
    if world > 1:
        # unused parameters exist (e.g. EDM's augmentation embedding, never given labels here)
        step = DistributedDataParallel(_Step(model, batch_losses), device_ids=[on] if on.type == "cuda" else None,
                                       find_unused_parameters=True)
    model.train()
    bar = tqdm(range(start, iters), desc=desc, mininterval=2.0, miniters=1, initial=start, total=iters,
               disable=rank > 0)
    for it in bar:
        if optim["lr_schedule"] == "cosine":
            for group in opt.param_groups:
                group["lr"] = optim["lr"] * 0.5 * (1 + math.cos(math.pi * it / iters))
        with torch.autocast(on.type, dtype=torch.bfloat16, enabled=bf16):
            terms = step(gen)
        terms = {k: v.float() for k, v in terms.items()}       # the same tensors in fp32
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
        logged = dict(loss=loss, **terms)
        if world > 1:       # every rank sees the mean over ranks: they stop alike and rank 0 logs the mean
            mean = torch.stack([v.detach() for v in logged.values()])
            dist.all_reduce(mean)
            logged = dict(zip(logged, mean / world))
        bad = 0 if torch.isfinite(logged["loss"]) else bad + 1
        if bad >= max_bad:
            kept = f"the last good checkpoint is kept at {checkpoint}" if checkpoint and checkpoint.is_file() \
                else "no checkpoint had been written"
            raise NonFiniteLoss(f"{desc}: loss was non-finite for {bad} consecutive steps (up to iteration "
                                f"{it + 1}); {kept}. Lower the learning rate or check the data.")
        if it % every == 0 or it == iters - 1:
            row = {"step": it + 1, **{k: v.item() for k, v in logged.items()}}
            rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
            if it % (every * 10) == 0 or it == iters - 1:
                log.info("%s step %d/%d %s", desc, it + 1, iters,
                         " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))
        if checkpoint and ckpt_every and (it + 1) % ckpt_every == 0 and it + 1 < iters and bad == 0:
            rng = {"gen": gen.get_state(), "torch": torch.get_rng_state(),
                   "cuda": torch.cuda.get_rng_state(on) if on.type == "cuda" else None}
            rngs = [rng] * world
            if world > 1:
                dist.all_gather_object(rngs, rng)
            if rank == 0:
                with atomic_path(checkpoint) as tmp:
                    torch.save({"run_id": run_id, "iteration": it + 1, "model": model.state_dict(),
                                "ema": ema.module.state_dict(), "opt": opt.state_dict(), "rng": rngs, "rows": rows,
                                "companions": {k: c.state_dict() for k, c in (companions or {}).items()}}, tmp)
    if own_group:
        dist.destroy_process_group()
    return ema.module.to("cpu", memory_format=torch.contiguous_format), rows


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
