"""profile: what a training step of an experiment's students costs on this machine, and how fast its teacher
makes pairs, at the experiment's sizes (or shrunk: `scale="small"`, a width) with random weights and synthetic
pairs: no download, no data, no store of the pipeline's needed.

For each student and each variant (precision and speed options, as kdm.training.train_loop takes them) it
measures, per training step: wall time (it/s, samples/s), FLOPs (torch.utils.flop_counter.FlopCounterMode,
counted eagerly), achieved TFLOP/s and their share of the device's peak, peak memory, host syncs and operator
calls / kernel launches (torch.profiler). For the teacher: pairs/s of the Heun sampler at each precision.

Each per-step number is a difference between two runs of the real training loop on the same synthetic store,
2 and 2 + `steps` iterations long, after a warm-up run: both runs log and set up alike, so the difference is
`steps` ordinary steps (no log or checkpoint step among them), divided by `steps`. Times are the fastest of
`repeats` runs of each length (default 3), since other work on the machine only ever adds time.

Writes <out>/<exp>.json and <out>/<exp>.md.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import platform
import resource
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from kdm import datasets
from kdm.io import atomic_path
from kdm.models import build
from kdm.pairset import open_pairset, write_pairset
from kdm.provenance import code_revision
from kdm.sampling import sample
from kdm.teachers import SONGUNET_SIZES
from kdm.training import student_setup, teacher_setup, train_loop

# dense bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s (SXM parts), by a part of the device name
PEAKS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}
# EDM's released DDPM++ teachers (its train.py configs): the size a pickle would have, by resolution
EDM_SIZES = {32: dict(channel_mult=[2, 2, 2], dropout=0.13, augment_dim=9),
             64: dict(channel_mult=[1, 2, 2, 2], dropout=0.05, augment_dim=9)}
SMALL = dict(model_channels=16, num_blocks=1)         # scale small: every UNet, and 8 rows per batch
HOST_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__")
OPTIONS = {"channels_last": {"channels_last": True}, "compile": {"compile": True},
           "compile=blocks": {"compile": "blocks"}, "cudagraphs": {"compile_mode": "reduce-overhead"}}


def parse_variant(text: str) -> dict:
    """'bf16+channels_last+compile=blocks' -> the train_loop options it names."""
    precision, *options = text.split("+")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"variant {text!r}: starts with fp32 or bf16, got {precision!r}")
    out = {"precision": precision}
    for o in options:
        if o not in OPTIONS:
            raise ValueError(f"variant {text!r}: unknown option {o!r}, expected one of {', '.join(OPTIONS)}")
        out.update(OPTIONS[o])
    if "compile_mode" in out and "compile" not in out:
        raise ValueError(f"variant {text!r}: cudagraphs needs compile or compile=blocks")
    return out


class HostReads(TorchFunctionMode):
    """Counts the calls that hand a tensor's value to Python (on a GPU each waits for the device), by name;
    not those of torch.optim, whose Adam keeps its step counts on the host by design (fused Adam, which
    training runs on GPUs, reads none)."""

    def __init__(self):
        super().__init__()
        self.count = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS and not sys._getframe(1).f_globals.get("__name__", "").startswith("torch.optim"):
            self.count[name] += 1
        return func(*args, **(kwargs or {}))


class Syncs:
    """Host syncs inside the block: on a GPU torch.cuda's sync debug mode (each synchronising call warns);
    on the CPU, which never waits for a device, the host reads (HostReads) the code would make on one."""

    def __init__(self, on: torch.device):
        self.on, self.count = on, Counter()

    @property
    def method(self) -> str:
        return ("torch.cuda.set_sync_debug_mode('warn'): synchronising CUDA calls" if self.on.type == "cuda" else
                "TorchFunctionMode counting Tensor." + "/".join(HOST_READS) + " outside torch.optim (host reads; "
                "the CPU has no device to wait for)")

    def __enter__(self):
        if self.on.type == "cuda":
            self._caught = warnings.catch_warnings(record=True)
            self._log = self._caught.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        else:
            self._mode = HostReads().__enter__()
        return self

    def __exit__(self, *exc):
        if self.on.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
            self._caught.__exit__(*exc)
            self.count = Counter("cuda sync" for w in self._log if "synchroniz" in str(w.message))
        else:
            self._mode.__exit__(*exc)
            self.count = self._mode.count


def _shrink(net: dict, scale: str, width: int | None) -> dict:
    net = dict(net)
    if net["kind"] in ("unet", "songunet"):
        net.update(SMALL if scale == "small" else {})
        net.update({"model_channels": width} if width else {})
    return net


def experiment_setup(P: dict, scale: str = "paper", width: int | None = None) -> dict:
    """The experiment's params with its UNets shrunk as asked, its data shape and label count, and the
    teacher's constructor arguments (an EDM pickle's: EDM's DDPM++ of that resolution)."""
    P = copy.deepcopy(P)
    data = datasets.make(P["data"])
    shape, label_dim = tuple(data.shape), data.label_dim
    t = P["teacher"]
    if t.get("source", "train") == "train":
        net, sigma_data = t["net"], t["sigma_data"]
    else:
        net = {"kind": "songunet", **SONGUNET_SIZES, **EDM_SIZES.get(shape[-1], {})}
        sigma_data = 0.5
    teacher = dict(data_shape=list(shape), net=_shrink(net, scale, width), sigma_data=sigma_data, label_dim=label_dim)
    for model in ("kdm", "kd"):
        P[model]["net"] = _shrink(P[model]["net"], scale, width)
    return {"P": P, "shape": shape, "label_dim": label_dim, "teacher": teacher}


def random_lpips(rec: dict, directory: Path) -> dict:
    """An LPIPS spec whose backbone weights are random (a file of them in `directory`): its cost, not its values."""
    import torchvision
    backbone = {"vgg": torchvision.models.vgg16, "alex": torchvision.models.alexnet}[rec["net"]]()
    path = directory / f"random-{rec['net']}.pth"
    torch.save({k: v for k, v in backbone.state_dict().items() if k.startswith("features.")}, path)
    return {**rec, "weights": str(path)}


def synthetic_store(directory: Path, shape, label_dim: int, rows: int, sigma_max: float):
    """A pair store of random pairs with a store's meta, memory-mapped as the real one."""
    g = np.random.default_rng(0)
    arrays = {"x0": g.uniform(-1, 1, (rows, *shape)).astype(np.float32),
              "xT": (sigma_max * g.standard_normal((rows, *shape))).astype(np.float32),
              "seeds": np.arange(rows, dtype=np.int64)}
    if label_dim:
        arrays["labels"] = g.integers(0, label_dim, rows).astype(np.int64)
    meta = {"teacher": {"path": "synthetic", "sha256": "", "label_dim": label_dim},
            "sampler": {"sigma_max": sigma_max}, "batch": rows}
    write_pairset(directory / "store", arrays, meta)
    return open_pairset(directory / "store")


class Trainer:
    """A student (random weights) on a store, or the teacher on the experiment's data, trained by train_loop for
    a given number of steps, again and again: the same networks each time, so that what torch.compile made once
    serves every run."""

    def __init__(self, model: str, p: dict, source, on: torch.device):
        """`source`: a pair store for a student, the data set (kdm.datasets) for the teacher."""
        self.model, self.p, self.on = model, p, on
        if model == "teacher":
            (self.net, _, self.batch_losses), self.companions = teacher_setup(p, source, on), {}
        else:
            self.net, _, self.batch_losses, self.companions = student_setup(model, p, source, 0, on)

    def __call__(self, iterations: int, context=None) -> float:
        """Seconds of a train_loop of `iterations` steps (it logs at the first and the last), inside `context`."""
        spec = {**self.p, "iterations": iterations, "log_every": 1 << 30, "checkpoint_every": 0}
        with context or contextlib.nullcontext():
            t0 = time.perf_counter()
            train_loop(self.net, self.batch_losses, self.p.get("loss_weights", {}), spec, seed=0,
                       desc=f"profile {self.model}", grad_clip=self.p.get("grad_clip", 0),
                       companions=self.companions, on=self.on, device_generator=True)
            if self.on.type == "cuda":
                torch.cuda.synchronize(self.on)
            return time.perf_counter() - t0


def _per_step(measure, steps: int):
    """measure(iterations) at 2 and 2 + steps iterations: (its value for `steps` ordinary steps) / steps."""
    a, b = measure(2), measure(2 + steps)
    if isinstance(a, Counter):
        return {k: (b[k] - a[k]) / steps for k in sorted(set(a) | set(b)) if b[k] != a[k]}
    return (b - a) / steps


def seconds_per_step(run, steps: int, repeats: int = 3, attempts: int = 3) -> float:
    """Wall seconds of one ordinary step: the fastest of `repeats` runs of each length; measured again (up to
    `attempts` times) while the difference is not positive, as when other work took the cores."""
    for _ in range(attempts):
        seconds = _per_step(lambda n: min(run(n) for _ in range(repeats)), steps)
        if seconds > 0:
            return seconds
    raise ValueError(f"profile: {steps} steps took no measurable time beyond the loop's setup ({seconds:.3g} s "
                     "per step; the machine is too busy or the steps too small): raise --steps")


def _profiled(on: torch.device):
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on.type == "cuda" else [])
    return torch.profiler.profile(activities=acts)


@functools.cache
def _computes(name: str) -> bool:
    """Whether aten operator `name` computes (on a GPU: launches a kernel) rather than makes a view or allocates."""
    op = getattr(torch.ops.aten, name, None)
    views = op is not None and all(getattr(op, o).is_view for o in op.overloads())
    return not views and not name.startswith(("empty", "resize"))


def _ops(events) -> Counter:
    """Top-level aten operator calls (those not inside another aten operator), the innermost calls that compute
    (neither a view nor an allocation: a CPU's count of what would be kernel launches) and device kernels."""
    out = Counter()
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA:
            out["kernels"] += 1
        elif e.name.startswith("aten::"):
            out["aten_ops"] += not (e.cpu_parent and e.cpu_parent.name.startswith("aten::"))
            out["compute_ops"] += _computes(e.name[6:]) and not any(c.name.startswith("aten::")
                                                                     for c in e.cpu_children)
    return out


# the ranges train_loop marks (record_function "kdm:<phase>"); data and the adversary lie within losses
PHASES = ("data", "losses", "adversary", "backward", "optimizer", "ema")


def _phases(events, skip: int = 2) -> dict:
    """Milliseconds per step in each phase of a profiled run, each exclusive and the median over its steps after
    the first `skip` (robust to other work taking the cores for a moment): forward is the losses' own time
    (without the batch's rows and the adversary); other is the rest of a step (from one step's losses to the
    next one's: logging, the loop's Python, the profiler's own cost)."""
    spans = {k: [] for k in PHASES}
    for e in events:
        if e.name.startswith("kdm:") and e.name[4:] in spans:
            spans[e.name[4:]].append((e.time_range.start, e.time_range.elapsed_us() / 1e3))
    ms = {}
    for k, got in spans.items():
        got = [d for _, d in sorted(got)[skip:]]
        ms[k] = float(np.median(got)) if got else 0.0
    starts = [t for t, _ in sorted(spans["losses"])[skip:]]
    step = float(np.median(np.diff(starts))) / 1e3 if len(starts) > 1 else 0.0
    return {"data": ms["data"], "forward": ms["losses"] - ms["data"] - ms["adversary"], "adversary": ms["adversary"],
            "backward": ms["backward"], "optimizer": ms["optimizer"], "ema": ms["ema"],
            "other": step - ms["losses"] - ms["backward"] - ms["optimizer"] - ms["ema"]}


def student(model: str, p: dict, store, variant: str, steps: int, on: torch.device, flops: float,
            repeats: int = 3) -> dict:
    """One row: a variant's per-step costs for `model` (`store`: the teacher's data set)."""
    p = {**p, **parse_variant(variant)}
    run = Trainer(model, p, store, on)
    run(2 + steps)                                      # warm-up: compilation, allocator, autotuning
    if on.type == "cuda":
        torch.cuda.reset_peak_memory_stats(on)
    seconds = seconds_per_step(run, steps, repeats)
    # a GPU: the most its allocator held; the CPU: the process's peak RSS (everything it did so far)
    peak_mb = torch.cuda.max_memory_allocated(on) / 2 ** 20 if on.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024 ** 2)

    events = []

    def counts(n):          # syncs and ops of the same runs; the phases of the longer one
        syncs, prof = Syncs(on), _profiled(on)
        with syncs:
            run(n, prof)
        events[:] = prof.events()
        return Counter({f"sync {k}": v for k, v in syncs.count.items()}) + _ops(events)
    per_step_ops = _per_step(counts, steps)
    peak = device_peak(on)
    tflops = flops / seconds / 1e12
    return {"model": model, "variant": variant, "batch": p["batch"], "it_per_s": 1 / seconds,
            "samples_per_s": p["batch"] / seconds, "flops_per_step": flops, "tflops_per_s": tflops,
            "share_of_peak": tflops / peak if peak else None, "peak_memory_mb": peak_mb,
            "syncs_per_step": {k[5:]: v for k, v in per_step_ops.items() if k.startswith("sync ")},
            "aten_ops_per_step": per_step_ops.get("aten_ops", 0.0),
            "compute_ops_per_step": per_step_ops.get("compute_ops", 0.0),
            "kernels_per_step": per_step_ops.get("kernels") if on.type == "cuda" else None,
            "phases_ms_per_step": _phases(events)}


def step_flops(model: str, p: dict, store, steps: int, on: torch.device) -> float:
    """FLOPs of one ordinary training step, counted in eager fp32 (the same count for every variant)."""
    run = Trainer(model, {**p, "precision": "fp32", "compile": False}, store, on)

    def count(n):
        mode = FlopCounterMode(display=False)
        run(n, mode)
        return mode.get_total_flops()
    return _per_step(count, steps)


def teacher_pairs(kwargs: dict, sampler: dict, batch: int, count: int, precision: str, on: torch.device) -> dict:
    """Pairs/s of the teacher's Heun sampler (random weights) on `count` seeds, after one warm-up batch."""
    net = build("teacher", kwargs, seed=0).eval().requires_grad_(False).to(on)
    net.data_shape = tuple(kwargs["data_shape"])
    seeds = np.arange(count, dtype=np.int64)
    with torch.inference_mode():
        sample(net, seeds[:batch], sampler, batch, "profile teacher (warm-up)", precision=precision)
        if on.type == "cuda":
            torch.cuda.synchronize(on)
        t0 = time.perf_counter()
        sample(net, seeds, sampler, batch, "profile teacher", precision=precision)
        seconds = time.perf_counter() - t0
    return {"model": "teacher", "variant": precision, "batch": batch, "pairs": count, "pairs_per_s": count / seconds}


def device_peak(on: torch.device) -> float | None:
    """The device's dense bf16 peak in TFLOP/s, if PEAKS knows it."""
    if on.type != "cuda":
        return None
    name = torch.cuda.get_device_name(on)
    return next((v for k, v in PEAKS.items() if k in name), None)


def profile(P: dict, exp: str, out: Path, on: torch.device, models=("kdm",), variants=("fp32",),
            pair_precisions=("fp32",), scale: str = "paper", width: int | None = None, batch: int | None = None,
            steps: int = 5, pairs_batch: int | None = None, pairs: int | None = None, repeats: int = 3) -> dict:
    """Measure and write <out>/<exp>.json and .md; returns the JSON's content."""
    for v in variants:
        parse_variant(v)                                # every variant checked before any work
    bad = [x for x in pair_precisions if x not in ("fp32", "bf16")]
    if bad:
        raise ValueError(f"pairs: precisions are fp32 and bf16, got {bad}")
    setup = experiment_setup(P, scale, width)
    E = setup["P"]
    small = scale == "small"
    rows = []
    with tempfile.TemporaryDirectory(prefix="kdm-profile-") as tmp:
        tmp = Path(tmp)
        for model in models:
            if model == "teacher" and E["teacher"].get("source", "train") != "train":
                raise ValueError(f"models: {exp}'s teacher is loaded (teacher.source "
                                 f"{E['teacher']['source']}), not trained: nothing to profile")
            p = {**E[model], "batch": batch or (8 if small else E[model]["batch"])}
            if model == "teacher":          # the EDM loss on the experiment's own data
                p["net"] = setup["teacher"]["net"]
                source = datasets.make(E["data"])
            else:
                if p["rec_loss"]["kind"] == "lpips":
                    p["rec_loss"] = random_lpips(p["rec_loss"], tmp)
                source = synthetic_store(tmp / model, setup["shape"], setup["label_dim"], max(4 * p["batch"], 64),
                                         E["sampler"]["sigma_max"])
            flops = step_flops(model, p, source, steps, on)
            rows += [student(model, p, source, v, steps, on, flops, repeats) for v in variants]
        pb = pairs_batch or (8 if small else E["pairs"]["batch"])
        rows += [teacher_pairs(setup["teacher"], E["sampler"], pb, pairs or 2 * pb, prec, on)
                 for prec in pair_precisions]
    peak = device_peak(on)
    name = torch.cuda.get_device_name(on) if on.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, bf16 " + \
        ("native" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "emulated: slower than fp32") + ")"
    result = {"experiment": exp, "device": name, "torch": torch.__version__, "code": code_revision(),
              "peak_tflops": peak,
              "peak": f"dense bf16 tensor-core peak {peak} TFLOP/s (data sheet), for every precision" if peak else
              "unknown peak for this device: no share of peak",
              "sync_method": Syncs(on).method,
              "ops_method": "torch.profiler: aten_ops top-level aten:: calls; compute_ops the innermost aten:: "
              "calls that are neither views nor allocations (a CPU's count of kernel launches); kernels: CUDA "
              "device events",
              "flops_method": "torch.utils.flop_counter.FlopCounterMode, eager fp32, per ordinary step",
              "phases_method": "train_loop's record_function ranges under torch.profiler, the median over the "
              "profiled run's steps after the first 2, host time (on a GPU the time to launch), exclusive: forward "
              "without the batch's rows and the adversary (its forward, backward and step, and the student's "
              "term), other the rest of a step",
              "per_step": f"difference between train_loop runs of 2 and {2 + steps} iterations, / {steps}; "
              f"times the fastest of {repeats} runs",
              "scale": scale, "width": width, "steps": steps, "repeats": repeats, "rows": rows}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / f"{exp}.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    with atomic_path(out / f"{exp}.md") as tmp:
        tmp.write_text(markdown(result))
    return result


def markdown(r: dict) -> str:
    def fmt(v):
        if isinstance(v, dict):
            return ", ".join(f"{k} {n:g}" for k, n in v.items()) or "0"
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
    train = [x for x in r["rows"] if "it_per_s" in x]
    teach = [x for x in r["rows"] if "pairs_per_s" in x]
    lines = [f"# Profile: {r['experiment']}", "",
             f"{r['device']}, torch {r['torch']}, code {r['code'] or 'unknown'}; scale {r['scale']}"
             + (f", width {r['width']}" if r["width"] else "") + ".", "",
             f"- peak: {r['peak']}", f"- per step: {r['per_step']}", f"- FLOPs: {r['flops_method']}",
             f"- syncs: {r['sync_method']}", f"- ops: {r['ops_method']}", ""]
    cols = ["model", "variant", "batch", "it_per_s", "samples_per_s", "flops_per_step", "tflops_per_s",
            "share_of_peak", "peak_memory_mb", "syncs_per_step", "aten_ops_per_step", "compute_ops_per_step",
            "kernels_per_step"]
    if train:
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(fmt(x[c]) for c in cols) + " |" for x in train]
        names = list(train[0]["phases_ms_per_step"])
        lines += ["", f"Where a step's time goes (ms per step; {r['phases_method']}):", "",
                  "| model | variant | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
        lines += [f"| {x['model']} | {x['variant']} | " + " | ".join(f"{x['phases_ms_per_step'][n]:.3g}" for n in names)
                  + " |" for x in train]
        lines.append("")
    if teach:
        cols = ["variant", "batch", "pairs", "pairs_per_s"]
        lines += ["Teacher pairs (Heun sampler, random weights):", "", "| precision | batch | pairs | pairs_per_s |",
                  "|---|---|---|---|"]
        lines += ["| " + " | ".join(fmt(x[c]) for c in cols) + " |" for x in teach]
    return "\n".join(lines) + "\n"
