"""Sampling with a teacher: pair arrays for a seed range (x_T from per-seed noise, x_0 from the Heun ODE solver),
what a pair set records of its teacher, and how long a model takes per sample."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kdm.device import device
from kdm.edm import edm_sampler, seed_latents
from kdm.images import save_pngs
from kdm.io import atomic_path, sha256_file
from kdm.models import load_model

log = logging.getLogger("kdm.sampling")


def teacher_identity(model_pt, net=None) -> dict:
    """What pairs record of their teacher (shards from different teachers never gather), and whether
    it is class-conditional (label_dim > 0: the pairs carry labels). `net`: the teacher, if already loaded."""
    net = load_model(model_pt) if net is None else net
    return {"path": str(model_pt), "sha256": sha256_file(model_pt), "label_dim": net.label_dim}


def pairs_meta(model_pt, P, net=None) -> dict:
    """What a pair set records of how it was made; the store checks every shard against it. A precision other
    than the default fp32 is recorded too (fp32 pair sets keep the meta they had before the option)."""
    precision = P["pairs"].get("precision", "fp32")
    return {"teacher": teacher_identity(model_pt, net), "sampler": P["sampler"], "batch": P["pairs"]["batch"]} | \
        ({"precision": precision} if precision != "fp32" else {})


def sample(net, seeds: np.ndarray, sampler: dict, batch: int, desc: str, partial: Path | None = None,
           run_id: str = "", precision: str = "fp32") -> dict:
    """Pair arrays for `seeds`: x_T = sigma_max * eps(seed), x_0 = Heun ODE solution, in batches; for a
    conditional teacher also the class label each seed requests, both as EDM's generate.py draws them
    (kdm.edm.seed_latents).

    A short last batch is padded to `batch` rows: CPU matmul kernels differ for very small batches
    (last-bit differences), so padding makes each pair independent of where the seed range ends and
    thus byte-identical for any shard count at a fixed batch size. With `partial` (a directory of its
    own), each finished batch is saved there and a rerun with the same `run_id` reuses them.
    `precision` bf16 runs the network under bf16 autocast (the preconditioning and the Heun steps stay fp32).
    """
    shape, on = net.data_shape, next(net.parameters()).device
    xT = np.empty((len(seeds),) + shape, np.float32)
    x0 = np.empty_like(xT)
    labels = np.empty(len(seeds), np.int64) if net.label_dim else None
    done = _resume(partial, run_id) if partial else set()
    for lo in tqdm(range(0, len(seeds), batch), desc=desc, mininterval=2.0):
        hi = min(lo + batch, len(seeds))
        eps, y = seed_latents(seeds[lo:hi], shape, net.label_dim)
        noise = sampler["sigma_max"] * eps
        xT[lo:hi] = noise.numpy()
        if labels is not None:
            labels[lo:hi] = y
        if lo in done:
            x0[lo:hi] = np.load(partial / f"{lo:012d}.npy")
            continue
        padded = torch.cat([noise, noise[-1:].expand(batch - len(noise), *shape)])
        y = None if labels is None else torch.from_numpy(np.pad(labels[lo:hi], (0, batch - (hi - lo)), mode="edge"))
        y = None if y is None else y.to(on)
        with torch.autocast(on.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            x0[lo:hi] = edm_sampler(net, padded.to(on), sampler["steps"], sampler["sigma_min"],
                                    sampler["sigma_max"], sampler["rho"], labels=y)[:hi - lo].cpu().numpy()
        if partial:
            with atomic_path(partial / f"{lo:012d}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, x0[lo:hi])
    if done:
        log.info("%s: resumed; %d of %d batches were already done", desc, len(done), -(-len(seeds) // batch))
    return {"x0": x0, "xT": xT, "seeds": seeds} | ({} if labels is None else {"labels": labels})


@torch.inference_mode()
def rederive(store, n: int, seed: int, teacher: Path | None = None, sha256: str | None = None,
             tolerance: float = 0.0) -> tuple[bool, list[str], dict]:
    """Re-sample `n` seeds of a pair set (drawn with `seed`, without replacement) with the teacher and sampler it
    recorded, and compare x_T, labels and x_0 with what it holds: bitwise (tolerance 0: the same device and
    precision as recorded; the noise and labels are drawn on the CPU, so they match bitwise anywhere), else
    within `tolerance` (largest absolute difference). `teacher`: a teacher model file for a pair set that
    recorded none (an imported one); `sha256`: the hash that file must have. Returns (ok, report lines,
    the largest absolute difference of each array compared)."""
    meta, lines = store.meta, []
    if teacher is None:
        if "source" in meta:
            return False, [f"{store.path}: imported from {meta['source'].get('format')} "
                           f"({meta['source'].get('path')}): it records no teacher that made it; name one with "
                           "--teacher PATH (a teacher model file, e.g. results/<exp>/teacher/model.pt) and --sha256"], {}
        teacher, sha256 = Path(meta["teacher"]["path"]), meta["teacher"]["sha256"]
    if not Path(teacher).is_file():
        return False, [f"teacher {teacher}: missing; the pairs were made by a file with sha256 {sha256}"], {}
    have = sha256_file(teacher)
    if sha256 is not None and have != sha256:
        return False, [f"teacher {teacher}: sha256 {have}, but the pairs record {sha256}: not the teacher that "
                       "made them"], {}
    lines.append(f"teacher {teacher}: sha256 {have}" + (" (as recorded)" if sha256 else " (no hash to check against)"))
    if n > len(store):
        raise ValueError(f"--rederive {n}: the pair set holds {len(store)} pairs; expected at most that")
    rows = np.sort(np.random.default_rng(seed).choice(len(store), size=n, replace=False))
    seeds = np.asarray(store["seeds"])[rows]
    lines.append(f"{n} seeds drawn with --seed {seed}: {', '.join(map(str, seeds[:20]))}"
                 + (" ..." if n > 20 else ""))
    net = load_model(teacher, to=device())
    got = sample(net, seeds, meta["sampler"], meta.get("batch", len(seeds)), desc="rederive",
                 precision=meta.get("precision", "fp32"))
    ok, largest = True, {}
    for name in ("xT", "labels", "x0"):
        if name not in store.arrays and name not in got:
            continue
        if (name in store.arrays) != (name in got):
            lines.append(f"{name}: the pair set {'has' if name in store.arrays else 'lacks'} it, the teacher "
                         f"{'does not make' if name in store.arrays else 'makes'} it")
            ok = False
            continue
        want = np.asarray(store[name])[rows]
        diff = np.abs(want.astype(np.float64) - got[name].astype(np.float64)).reshape(n, -1).max(1)
        bad = seeds[diff > tolerance]
        largest[name] = float(diff.max())
        lines.append(f"{name}: largest difference {diff.max():.3g}" + (" (bitwise equal)" if not diff.any() else "")
                     + (f"; {len(bad)} seeds beyond {tolerance:g}: {', '.join(map(str, bad[:50]))}" if len(bad) else ""))
        ok &= not len(bad)
    return ok, lines, largest


@torch.inference_mode()
def generate(net, seeds: np.ndarray, sampler: dict, batch: int, desc: str, student: bool):
    """Images x_0 for `seeds` and the labels they requested (None for an unconditional model), as EDM's
    generate.py makes them: per-seed noise and labels (kdm.edm.seed_latents), x_T = sigma_max * eps, then a
    teacher's Heun sampler or a one-step student's single call."""
    if not student:
        arrays = sample(net, seeds, sampler, batch, desc)
        return arrays["x0"], arrays.get("labels")
    eps, labels = seed_latents(seeds, net.data_shape, net.label_dim)
    y = None if labels is None else torch.from_numpy(labels)
    return one_step(net, sampler["sigma_max"] * eps, y, batch).numpy(), labels


def requested_labels(arrays) -> torch.Tensor | None:
    """The class labels a pair set's seeds requested (a conditional teacher's), or None."""
    return torch.from_numpy(np.asarray(arrays["labels"])) if "labels" in arrays else None


@torch.inference_mode()
def one_step(net, x_T: torch.Tensor, labels: torch.Tensor | None, batch: int) -> torch.Tensor:
    """A one-step student's x_0 for every x_T (and requested label), in batches on its device; on the CPU."""
    on = next(net.parameters()).device
    return torch.cat([net(x_T[i:i + batch].to(on), None if labels is None else labels[i:i + batch].to(on)).cpu()
                      for i in range(0, len(x_T), batch)])


def export_pngs(model_pt, P: dict, seeds, outdir, subdirs: bool, batch: int | None, student: bool, desc: str) -> int:
    """The images of the model at `model_pt` for `seeds`, one PNG each, named as EDM's generate.py names them
    (kdm.images); `P` the experiment's params (its sampler; batch default evaluate.batch)."""
    net = load_model(model_pt, to=device())
    seeds, batch = np.asarray(seeds, np.int64), batch or P["evaluate"]["batch"]
    chunk = 10 * batch          # a chunk at a time: 50k CIFAR images need not fit in memory
    for lo in range(0, len(seeds), chunk):
        x0, _ = generate(net, seeds[lo:lo + chunk], P["sampler"], batch, desc, student)
        save_pngs(x0, seeds[lo:lo + chunk], outdir, subdirs)
    return len(seeds)


def _resume(partial: Path, run_id: str) -> set[int]:
    """Start offsets of the batches already saved in `partial` for this exact run; else start it clean."""
    if not partial.name.endswith(".partial"):
        raise ValueError(f"{partial}: a resume directory must be named *.partial")   # never clear anything else
    stamp = partial / "run_id"
    if stamp.is_file() and stamp.read_text() == run_id:
        return {int(f.stem) for f in partial.glob("[0-9]*.npy")}
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    stamp.write_text(run_id)
    return set()



def speed(sample_fn, shape, ev: dict) -> float:
    x_T = torch.randn((ev["speed_batch"],) + tuple(shape), generator=torch.Generator().manual_seed(0))
    return ms_per_sample(sample_fn, x_T.to(device()), ev["speed_repeats"])


def speed_labels(net, ev: dict):
    """The classes a conditional model is asked for in the speed batch: 0, 1, 2, ... in turn."""
    return torch.arange(ev["speed_batch"], device=device()) % net.label_dim if net.label_dim else None


def teacher_speed(net, sampler: dict, ev: dict) -> float:
    """ms per sample of the teacher's Heun sampler (2 * steps - 1 network evaluations)."""
    labels = speed_labels(net, ev)

    def sample_fn(x_T):
        return edm_sampler(net, x_T, sampler["steps"], sampler["sigma_min"], sampler["sigma_max"], sampler["rho"],
                           labels=labels)
    return speed(sample_fn, net.data_shape, ev)


@torch.inference_mode()
def ms_per_sample(sample_fn, x_T: torch.Tensor, repeats: int) -> float:
    """Median wall time of sample_fn(x_T) over `repeats` calls after one warm-up, per sample, in ms
    (on a GPU, until its work has finished)."""
    sync = torch.cuda.synchronize if x_T.is_cuda else (lambda: None)
    sample_fn(x_T)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        sample_fn(x_T)
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3 / len(x_T)
