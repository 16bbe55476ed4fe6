"""The training loop every trained model shares (teacher, students, classifier), the students' batches and
losses on a pair store, and a training stage's outputs."""
from __future__ import annotations

import copy
import csv
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function
from tqdm import tqdm

from kdm import plots
from kdm.device import rank_batch, ranks
from kdm.edm import edm_loss
from kdm.io import atomic_path, write_json
from kdm.models import build, save_model
from kdm.optim import adam, fuse, step
from kdm.provenance import provenance
from kdm.students import Adversary, rec_loss
from kdm.unet import CompactBlock, UNetBlock

log = logging.getLogger("kdm.train")


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


def _compile(model: nn.Module, how: bool | str, mode: str = "default") -> None:
    """torch.compile in place, with torch.compile's `mode` (reduce-overhead: CUDA graphs): the model's networks
    (its children with parameters; a leaf model itself), or with how="blocks" each UNet block (regional
    compilation: one compiled graph per distinct block, so compile time stays bounded; the networks whole when
    there are none). Module.compile keeps the state dict's keys (no `_orig_mod.` prefix), and the students'
    training calls, which are not model.forward, run the compiled modules."""
    blocks = [m for m in model.modules() if isinstance(m, (UNetBlock, CompactBlock))] if how == "blocks" else []
    # static shapes, one graph per distinct block and batch size (an epoch's short last batch): a DDPM++ UNet
    # has more than torch's default limit of 8 graphs per code object (cache_size_limit, recompile_limit in newer
    # torch), past which the rest would run eagerly
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * len(blocks))
    for net in blocks or [c for c in model.children() if any(True for _ in c.parameters())] or [model]:
        net.compile(mode=mode, dynamic=False)


def _seeds(seed: int, rank: int, world: int) -> tuple[int, int | None]:
    """Seeds of a rank's batch generator and of its global torch RNG (dropout). One process keeps `seed` and
    the RNG as the model's build left it, as before DDP existed; each of several ranks gets its own pair."""
    if world == 1:
        return seed, None
    batches, global_rng = np.random.SeedSequence([seed, rank]).generate_state(2)
    return int(batches), int(global_rng)


class NonFiniteLoss(ValueError):
    """The loss stayed NaN/inf for too many consecutive steps: params or data to change (hence a ValueError,
    which the CLI reports as a message)."""


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


def _restore(state: dict, parts: dict, gen: torch.Generator, rank: int, on: torch.device) -> None:
    """A checkpoint's weights, optimiser and companion states into `parts`, and this rank's RNG states."""
    for name in ("model", "ema", "opt"):
        parts[name].load_state_dict(state[name])
    for name, companion in parts["companions"].items():
        companion.load_state_dict(state["companions"][name])
    rng = state["rng"][rank]
    gen.set_state(rng["gen"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None:
        torch.cuda.set_rng_state(rng["cuda"], on)


def _save(path: Path, progress: dict, parts: dict, gen: torch.Generator, rank: int, world: int,
          on: torch.device) -> None:
    """A checkpoint of `parts` and every rank's RNG states (gathered to rank 0, which alone writes it)."""
    rng = {"gen": gen.get_state(), "torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state(on) if on.type == "cuda" else None}
    rngs = [rng] * world
    if world > 1:
        dist.all_gather_object(rngs, rng)
    if rank == 0:
        with atomic_path(path) as tmp:
            torch.save({**progress, "model": parts["model"].state_dict(), "ema": parts["ema"].state_dict(),
                        "opt": parts["opt"].state_dict(), "rng": rngs,
                        "companions": {k: c.state_dict() for k, c in parts["companions"].items()}}, tmp)


def train_loop(model: torch.nn.Module, batch_losses: Callable[[torch.Generator], dict], weights: dict,
               optim: dict, seed: int, grad_clip: float = 0.0, desc: str = "train",
               checkpoint: Path | None = None, run_id: str = "", companions: dict | None = None,
               on: torch.device | str = "cpu", snapshots: Path | None = None, snapshot_every: int = 0,
               device_generator: bool = False):
    """Adam on sum(weights[k] * loss_k), lr constant or cosine-decayed; returns (EMA module on the CPU, log rows).

    The model (and companions) train on device `on`; `batch_losses` must hand it batches there.

    Terms without a gradient (e.g. a discriminator's own loss, stepped by its `companion`) or weighted 0
    are logged, not summed. `companions` (name -> object with to/state_dict/load_state_dict: kdm.students.Adversary,
    EpochOrder) hold state that `batch_losses` changes; they are saved in, and restored from, the checkpoints.

    Non-finite gradient entries are zeroed, as in the authors' code; a loss that stays non-finite for
    `optim["max_nonfinite_steps"]` steps raises NonFiniteLoss, leaving the last good checkpoint. That count
    stays on the device and is read only at log steps (every `log_every`), checkpoint steps and the last
    step, so that no other step waits for the device: the stop may come up to `log_every` steps late.
    `batch_losses` draws its batch and any noise from the generator it is given, so the run is a pure
    function of `seed`: a CPU generator, or with `device_generator` on a GPU one on that GPU (the students
    draw rows and latent noise there without a host sync; another stream of numbers than the CPU's). Every
    `optim["checkpoint_every"]` steps the model, EMA, optimiser and RNG states go to `checkpoint`; a later
    call with the same `run_id` (kdm.provenance.fingerprint of what the run depends on) resumes there and
    ends with bitwise the same weights as an uninterrupted run.

    Speed options in `optim`, all off by default: `precision: bf16` runs `batch_losses` under bf16 autocast
    (weights, EMA, optimiser and the sum of the losses stay fp32); `channels_last` stores the model's (and
    companions') conv weights channels-last, so convolutions run in that layout; `compile` torch.compiles
    the model's networks in place, or with `compile: blocks` each UNet block, with torch.compile's
    `compile_mode` (reduce-overhead: CUDA graphs); saved weights stay plain state dicts. On a GPU, Adam
    (the model's and the adversary's) runs its fused kernel.

    Under torchrun (WORLD_SIZE > 1) every rank runs this loop: the model is wrapped in DDP (gradients
    averaged over ranks; companions average theirs with `kdm.optim.average_gradients`), each rank draws its batches
    and noise from its own generator seeded by (seed, rank) - a different, still deterministic, run than
    one process's - and logs the mean of the ranks' losses; rank 0 alone writes checkpoints, holding every
    rank's RNG states, and all ranks resume from them. The run id includes the number of ranks.
    """
    on = torch.device(on)
    rank, world = ranks()
    batch_seed, global_seed = _seeds(seed, rank, world)
    snapshots = snapshots if snapshot_every and rank == 0 else None
    gen = torch.Generator(on if device_generator and on.type == "cuda" else "cpu").manual_seed(batch_seed)
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
    fuse(opt, on)
    ema = EMA(model, optim["ema"])
    every, iters = optim.get("log_every", 100), optim["iterations"]
    ckpt_every, max_bad = optim.get("checkpoint_every", 0), optim.get("max_nonfinite_steps", 100)
    rows, start = [], 0
    # consecutive non-finite losses up to the last step, and the longest such run: kept on the device
    run, longest = torch.zeros(2, dtype=torch.int64, device=on).unbind()
    parts = {"model": model, "ema": ema.module, "opt": opt, "companions": companions or {}}
    state = _load_checkpoint(checkpoint, run_id)
    if state:
        _restore(state, parts, gen, rank, on)
        rows, start = state["rows"], state["iteration"]
        log.info("%s: resumed from checkpoint %s at iteration %d", desc, checkpoint, start)
    elif snapshots and snapshots.exists():      # another run's: this one starts from the beginning
        shutil.rmtree(snapshots)
    compiled = optim.get("compile", False)
    if compiled:                                # after the EMA's copy, which stays an eager module
        _compile(model, compiled, optim.get("compile_mode", "default"))
    losses = batch_losses
    if world > 1:
        # static graph: the same parameters take part in every step, and DDP learns once which never do (e.g.
        # EDM's augmentation embedding, never given labels here) instead of searching the graph every step
        losses = DistributedDataParallel(_Step(model, batch_losses), device_ids=[on] if on.type == "cuda" else None,
                                       static_graph=True)
    model.train()
    bar = tqdm(range(start, iters), desc=desc, mininterval=2.0, miniters=1, initial=start, total=iters,
               disable=rank > 0)
    for it in bar:
        if compiled:
            torch.compiler.cudagraph_mark_step_begin()      # CUDA graphs may reuse the last step's outputs
        if optim["lr_schedule"] == "cosine":
            for group in opt.param_groups:
                group["lr"] = optim["lr"] * 0.5 * (1 + math.cos(math.pi * it / iters))
        # "kdm:<phase>" ranges: where a step's time goes, for `python -m kdm profile` (free without a profiler)
        with torch.autocast(on.type, dtype=torch.bfloat16, enabled=bf16), record_function("kdm:losses"):
            terms = losses(gen)
        terms = {k: v.float() for k, v in terms.items()}       # the same tensors in fp32
        # a term weighted 0 is logged but left out of the sum: backward never runs through it, and its zero
        # gradients added nothing (the same bytes; the checkerboard KDM, push 0, steps 1.14x faster)
        loss = sum(weights.get(k, 1.0) * v for k, v in terms.items() if v.requires_grad and weights.get(k, 1.0))
        opt.zero_grad(set_to_none=True)
        with record_function("kdm:backward"):
            loss.backward()
        with record_function("kdm:optimizer"):
            step(opt, model.parameters(), grad_clip)
        with record_function("kdm:ema"):
            ema.update(model)
        logged = dict(loss=loss, **terms)
        if world > 1:       # every rank sees the mean over ranks: they stop alike and rank 0 logs the mean
            mean = torch.stack([v.detach() for v in logged.values()])
            dist.all_reduce(mean)
            logged = dict(zip(logged, mean / world))
        run.add_(1).mul_(~torch.isfinite(logged["loss"]))         # 0 after a finite loss
        torch.maximum(longest, run, out=longest)
        log_now = it % every == 0 or it == iters - 1
        save_now = checkpoint and ckpt_every and (it + 1) % ckpt_every == 0 and it + 1 < iters
        clean = (log_now or save_now) and _finite_so_far(run, longest, max_bad, it, every, desc, checkpoint)
        if log_now:
            row = {"step": it + 1, **dict(zip(logged, torch.stack(list(logged.values())).detach().tolist()))}
            rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
            if it % (every * 10) == 0 or it == iters - 1:
                log.info("%s step %d/%d %s", desc, it + 1, iters,
                         " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))
        if snapshots and (it + 1) % snapshot_every == 0:
            save_snapshot(snapshots, it + 1, ema.module)
        if save_now and clean:
            _save(checkpoint, {"run_id": run_id, "iteration": it + 1, "rows": rows}, parts, gen, rank, world, on)
    if own_group:
        dist.destroy_process_group()
    return ema.module.to("cpu", memory_format=torch.contiguous_format), rows


def _finite_so_far(run: torch.Tensor, longest: torch.Tensor, max_bad: int, it: int, every: int, desc: str,
                   checkpoint: Path | None) -> bool:
    """Whether the last loss was finite; NonFiniteLoss if `max_bad` consecutive ones were not. Reads the
    device (one sync): only at log and checkpoint steps."""
    now, worst = torch.stack([run, longest]).tolist()
    if worst >= max_bad:
        kept = f"the last good checkpoint is kept at {checkpoint}" if checkpoint and checkpoint.is_file() \
            else "no checkpoint had been written"
        raise NonFiniteLoss(f"{desc}: loss was non-finite for {worst} consecutive steps (seen at iteration {it + 1}; "
                            f"checked every {every} steps and at checkpoints); {kept}. Lower the learning rate or "
                            "check the data.")
    return now == 0


def save_snapshot(directory: Path, iteration: int, module: torch.nn.Module) -> None:
    """The EMA weights at `iteration`, as <iteration:09d>.pt (a state dict: the model's arch and kwargs are in its
    model.pt)."""
    with atomic_path(Path(directory) / f"{iteration:09d}.pt") as tmp:
        torch.save({"iteration": iteration, "state_dict": module.state_dict()}, tmp)


def finish_snapshots(partial: Path | None, out) -> None:
    """Move the snapshots a run saved in `partial` to its output directory `out`, with index.json listing them
    by iteration (an empty list when the run took none)."""
    files = sorted(partial.glob("*.pt")) if partial and partial.is_dir() else []
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for f in files:
            f.rename(tmp / f.name)
        write_json(tmp / "index.json", [{"iteration": int(f.stem), "file": f.name} for f in files])
    if partial and partial.is_dir():
        shutil.rmtree(partial)


def write_rows(path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["step", "loss"])   # none: nothing trained
        w.writeheader()
        w.writerows(rows)


def write_run(stage, arch: str, kwargs: dict, module, data_shape, rows: list[dict], resolved: dict,
              started: float, source: dict | None = None) -> None:
    """A training stage's outputs: the model, its config (resolved params, provenance and the wall time
    since `started`, a time.perf_counter() value: a resumed run counts only its own part), its loss log and
    curve. A loaded model (no `rows`) records where it came from (`source`) instead of a training log."""
    seconds = time.perf_counter() - started
    write_rows(stage.plots.losses, rows)
    plots.loss_curve(rows, stage.plots.loss_curve, title=stage.name)
    write_json(stage.outs.config, {"stage": stage.name, "arch": arch, "kwargs": kwargs, "params": resolved,
                                   "train_seconds": seconds, "provenance": provenance(),
                                   **({"source": source} if source else {})})
    save_model(stage.outs.model, arch, kwargs, module, data_shape)   # last: its presence marks the run complete
    if stage.scratch_path:
        stage.scratch_path.unlink(missing_ok=True)                     # done: a later run starts afresh


def student_kwargs(model: str, p: dict, data_shape, sigma_max: float, label_dim: int) -> dict:
    """The student's constructor arguments (saved with its weights). Optional params enter only when set, so
    that models of params without them keep the bytes they had before the options existed."""
    x_T_scale = sigma_max if p.get("scale_x_T", True) else 1.0
    kwargs = dict(data_shape=list(data_shape), net=p["net"], x_T_scale=x_T_scale, label_dim=label_dim)
    if model == "kdm":
        kwargs.update(latent_dim=p["latent_dim"], operator=p["operator"])
        if p["net"]["kind"] == "unet":
            kwargs["latent_channels"] = p["latent_channels"]
        if "encoder_act" in p:
            kwargs["encoder_act"] = p["encoder_act"]
    return kwargs


def teacher_setup(t: dict, data, on):
    """A teacher (params section `t`) ready to train on `data` (kdm.datasets) with the EDM loss: (net, its kwargs,
    batch_losses(gen)). The teacher stage runs it to the end; the profile times a few of its steps."""
    kwargs = dict(data_shape=list(data.shape), net=t["net"], sigma_data=t["sigma_data"], label_dim=data.label_dim)
    net = build("teacher", kwargs, seed=t["seed"])
    batch = rank_batch(t["batch"], "teacher.batch")      # this process's share (torchrun: of WORLD_SIZE)

    def batch_losses(gen):
        with record_function("kdm:data"):
            x0, labels = data.sample(batch, gen)
            x0, labels = x0.to(on), None if labels is None else labels.to(on)
        return {"edm": edm_loss(net, x0, gen, t["P_mean"], t["P_std"], labels)}
    return net, kwargs, batch_losses


def student_setup(model: str, p: dict, store, seed: int, on):
    """A student ready to train on `store`: (net, its kwargs, batch_losses(gen), companions).
    The train stage runs it to the end; the benchmark times a few of its steps."""
    rows = StoreRows(store, on)
    shape = store["x0"].shape[1:]
    kwargs = student_kwargs(model, p, shape, store.meta["sampler"]["sigma_max"], store.meta["teacher"]["label_dim"])
    net = build(model, kwargs, seed=seed)
    rec = rec_loss(p["rec_loss"])
    batch = rank_batch(p["batch"], f"{model}.batch")     # this process's share (torchrun: of WORLD_SIZE)
    extra, companions = {}, {}
    if model == "kdm":
        extra["latent_noise"] = p["latent_noise"]
        # the discriminator sees images: (channels, resolution, resolution); at weight 0 its term moves nothing,
        # so none is trained (the student's bytes are the same; a third of a digits step's FLOPs saved)
        if p.get("adversary") and p["loss_weights"]["adv"]:
            extra["adversary"] = companions["adversary"] = Adversary(
                shape[0], shape[-1], p["adversary"]["widths"], p["lr"], p["betas"], seed=seed + 1,
                head=p["adversary"].get("head", "linear"))
    n = p.get("pairs_used", len(store))     # a pair budget: the store's first n pairs (seed order)
    if n > len(store):
        raise ValueError(f"{model}.pairs_used: {n} exceeds the store's {len(store)} pairs; expected at most that")
    order = None
    if p.get("data_order", "with_replacement") == "epochs":     # the global batch: each rank takes its part
        order = companions["order"] = EpochOrder(n, p["batch"], seed)

    def batch_losses(gen):
        with record_function("kdm:data"):
            got = rows(torch.from_numpy(order.next_rows()) if order else batch_indices(n, batch, gen))
        return net.losses(got["x0"], got["xT"], gen, rec=rec, labels=got.get("labels"), **extra)
    return net, kwargs, batch_losses, companions


def batch_indices(n: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """A training batch's rows, on the generator's device: uniform with replacement, sorted so memory-mapped
    reads go in file order."""
    return torch.randint(n, (batch,), generator=gen, device=gen.device).sort().values


class StoreRows:
    """A store's rows (x0, xT and labels when it has them) on device `on`, gathered by row index. On the CPU,
    and on a GPU whose free memory the store would fill beyond half, they are read from the memory-mapped
    files; from there a GPU gets them through pinned memory, without waiting. Otherwise the store is copied to
    the GPU once and rows are gathered there: with indices drawn on the GPU, no step waits for the host."""

    CHUNK = 1 << 16         # rows per copy to the GPU: the host holds one chunk at a time

    def __init__(self, store, on: torch.device):
        self.on = torch.device(on)
        self.arrays = {n: store[n] for n in ("x0", "xT", "labels") if n in store.arrays}
        size = sum(a.nbytes for a in self.arrays.values())
        self.resident = self.on.type == "cuda" and size < torch.cuda.mem_get_info(self.on)[0] / 2
        if self.resident:
            self.arrays = {n: self._copy(a) for n, a in self.arrays.items()}
        elif self.on.type == "cuda":
            log.warning("the store (%.1f GB) is read from its memory-mapped files: rows drawn on the GPU wait for "
                        "their copy to the host every step", size / 1e9)

    def _copy(self, a) -> torch.Tensor:
        out = torch.empty(a.shape, dtype=torch.from_numpy(np.array(a[:1])).dtype, device=self.on)
        for i in range(0, len(a), self.CHUNK):
            out[i:i + self.CHUNK] = torch.from_numpy(np.array(a[i:i + self.CHUNK]))
        return out

    def __call__(self, idx: torch.Tensor) -> dict:
        if self.resident:
            idx = idx.pin_memory().to(self.on, non_blocking=True) if idx.device.type == "cpu" else idx
            return {n: a[idx] for n, a in self.arrays.items()}
        idx = idx.cpu().numpy()
        got = {n: torch.from_numpy(a[idx]) for n, a in self.arrays.items()}
        if self.on.type == "cuda":
            return {n: t.pin_memory().to(self.on, non_blocking=True) for n, t in got.items()}
        return {n: t.to(self.on) for n, t in got.items()}


class EpochOrder:
    """The authors' data order (params `data_order: epochs`): every epoch a fresh permutation of the n rows,
    cut into consecutive batches of the global `batch`, the last one short, as their sampler keeps it. Epoch
    e's permutation is seeded by (seed, e) alone and the position is a step count, so that every rank (each
    takes its part of the global batch) and a resumed run (the count is checkpointed) see the same order."""

    def __init__(self, n: int, batch: int, seed: int):
        self.n, self.batch, self.seed, self.step = n, batch, seed, 0
        self.per_epoch = -(-n // batch)
        self._perm = (None, None)                   # (epoch, its permutation): drawn once per epoch

    def next_rows(self) -> np.ndarray:
        epoch, k = divmod(self.step, self.per_epoch)
        if self._perm[0] != epoch:
            g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]))
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        rank, world = ranks()
        rows = self._perm[1][k * self.batch:(k + 1) * self.batch].tensor_split(world)[rank]
        self.step += 1
        return rows.sort().values.numpy()          # sorted: memory-mapped reads in file order

    def to(self, *args, **kwargs):
        return self                                 # nothing on a device

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
