"""benchmark: speed, memory and scale of the pipeline's own products, measured side by side in one run.

- sampling: teacher (Heun, 2N-1 NFE), KDM and KD at several batch sizes, and each student's speedup
  over the teacher at the same batch (timed in this process, one after the other);
- training: steps/s and samples/s of KDM and KD on their real store and params, and how fast the store
  serves the same random batches (memory-mapped reads) against what training consumes;
- memory: peak RSS of a KDM training process on the store and on a store with `scale` times the pairs
  (memory-mapped: it should stay flat);
- pairs: teacher pair throughput when one seed range is split into 1, 2, 4, ... shards, each shard its
  own one-thread process, at most one per core (what Snakemake does with pair jobs).

The pipeline's own overhead (Snakemake and DVC on a tiny workspace) is measured outside the DAG, by
tests/overhead.py.

Writes results/benchmarks.csv (one row per measurement, a `section` column), results/benchmarks.md and
results/benchmarks.png. Timings are wall-clock on this machine; ratios taken in one run are what to
compare across machines.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kdm import plots
from kdm.device import device
from kdm.edm import nfe
from kdm.io import atomic_path, read_json
from kdm.models import load_model
from kdm.pairset import open_pairset, write_pairset
from kdm.provenance import code_revision
from kdm.sampling import sample, speed, speed_labels, teacher_speed
from kdm.training import batch_indices, student_setup, train_loop

log = logging.getLogger("kdm.benchmark")


# ---- sampling ---------------------------------------------------------------------------------------
def sampling(exp: str, models: dict, sampler: dict, b: dict) -> list[dict]:
    """ms/sample of the teacher and each student at each batch size; speedup = teacher ms / student ms."""
    on = device()
    teacher = load_model(models["teacher"], to=on)
    students = {name: load_model(path, to=on) for name, path in models.items() if name != "teacher"}
    rows = []
    for batch in b["batches"]:
        ev = {"speed_batch": batch, "speed_repeats": b["repeats"]}
        t_ms = teacher_speed(teacher, sampler, ev)
        rows.append(_sampling_row(exp, "teacher", batch, nfe(sampler["steps"]), t_ms, 1.0))
        for name, net in students.items():
            labels = speed_labels(net, ev)
            ms = speed(lambda x, net=net, labels=labels: net(x, labels), net.data_shape, ev)
            rows.append(_sampling_row(exp, name, batch, 1, ms, t_ms / ms))
        log.info("sampling %s batch %d: %s", exp, batch, [f"{r['model']} {r['ms_per_sample']:.3g} ms"
                                                           for r in rows[-1 - len(students):]])
    return rows


def _sampling_row(exp, model, batch, n, ms, speedup):
    return {"section": "sampling", "experiment": exp, "model": model, "batch": batch, "nfe": n,
            "ms_per_sample": ms, "samples_per_s": 1e3 / ms, "speedup": speedup}


# ---- training and store reads -----------------------------------------------------------------------
def _steps(model: str, p: dict, store, seed: int, iterations: int) -> float:
    """Seconds for `iterations` real training steps (no checkpoints) of `model` on `store`."""
    on = device()
    net, _, batch_losses, companions = student_setup(model, p, store, seed, on)
    spec = {**p, "iterations": iterations, "checkpoint_every": 0, "log_every": iterations}
    t0 = time.perf_counter()
    train_loop(net, batch_losses, p.get("loss_weights", {}), spec, seed=seed, desc=f"benchmark {model}",
               companions=companions, on=on, device_generator=True)
    return time.perf_counter() - t0


def store_reads(store, batch: int, batches: int, seed: int) -> float:
    """Samples/s at which the memory-mapped store serves training batches (as kdm.training reads them)."""
    gen = torch.Generator().manual_seed(seed)
    names = [n for n in ("x0", "xT", "labels") if n in store.arrays]
    t0 = time.perf_counter()
    for _ in range(batches):
        idx = batch_indices(len(store), batch, gen).numpy()
        for n in names:
            torch.from_numpy(store[n][idx])
    return batches * batch / (time.perf_counter() - t0)


def training(exp: str, store, configs: dict, seed: int, b: dict) -> list[dict]:
    rows = []
    for model, config_json in configs.items():
        p = read_json(config_json)["params"][model]
        _steps(model, p, store, seed, b["warmup"])              # allocator, kernels and caches warm
        seconds = _steps(model, p, store, seed, b["iterations"])
        consumed = b["iterations"] * p["batch"] / seconds
        served = store_reads(store, p["batch"], b["read_batches"], seed)
        rows.append({"section": "training", "experiment": exp, "model": model, "batch": p["batch"],
                     "it_per_s": b["iterations"] / seconds, "samples_per_s": consumed,
                     "store_samples_per_s": served, "read_over_consume": served / consumed})
        log.info("training %s %s: %.2f it/s, store serves %.0fx what it consumes", exp, model,
                 b["iterations"] / seconds, served / consumed)
    return rows


# ---- memory -----------------------------------------------------------------------------------------
def _status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status in MB (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _train_rss(store_dir: str, model: str, p: dict, seed: int, iterations: int, threads: int) -> dict:
    """In a fresh process: train `iterations` steps on the store, then report peak and current RSS."""
    torch.set_num_threads(threads)
    _steps(model, p, open_pairset(store_dir), seed, iterations)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024 ** 2)
    return {"peak_rss_mb": peak, "rss_anon_mb": _status_mb("RssAnon"), "rss_file_mb": _status_mb("RssFile")}


def _scaled_store(store, path: Path, scale: int) -> None:
    """`store`'s pairs repeated `scale` times (fresh seeds): a bigger store with the same meta."""
    arrays = {n: np.concatenate([np.asarray(a)] * scale) for n, a in store.arrays.items() if n != "seeds"}
    arrays["seeds"] = np.arange(scale * len(store), dtype=np.int64)
    write_pairset(path, arrays, store.meta)


def memory(exp: str, store, config_json: str, seed: int, b: dict, scratch: Path) -> list[dict]:
    model = "kdm"
    p = read_json(config_json)["params"][model]
    big = scratch / f"store-{b['scale']}x"
    _scaled_store(store, big, b["scale"])
    rows = []
    for scale, path in ((1, store.path), (b["scale"], big)):
        with _pool(1) as pool:
            got = pool.submit(_train_rss, str(path), model, p, seed, b["iterations"], 1).result()
        store_mb = sum(f.stat().st_size for f in path.glob("*.npy")) / 2 ** 20
        rows.append({"section": "memory", "experiment": exp, "model": model, "pairs": scale * len(store),
                     "store_mb": store_mb, **got})
    for r in rows:
        r["vs_1x"] = r["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    log.info("memory %s: peak RSS %s MB", exp, [round(r["peak_rss_mb"]) for r in rows])
    return rows


# ---- pair sampling against shard count --------------------------------------------------------------
def _pool(workers: int):
    # fresh interpreters (not forks of this one): each measures its own start-up, memory and threads
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _sample_shard(teacher_pt: str, seeds: np.ndarray, sampler: dict, batch: int) -> int:
    torch.set_num_threads(1)
    net = load_model(teacher_pt, to=device())
    return len(sample(net, seeds, sampler, batch, desc=f"shard of {len(seeds)}")["x0"])


def pair_throughput(exp: str, teacher_pt: str, sampler: dict, b: dict) -> list[dict]:
    cores = os.cpu_count() or 1
    seeds = np.arange(b["count"], dtype=np.int64)
    rows = []
    for shards in b["shards"]:
        workers = min(shards, cores)
        t0 = time.perf_counter()
        with _pool(workers) as pool:
            done = sum(pool.map(_sample_shard, [teacher_pt] * shards, np.array_split(seeds, shards),
                                [sampler] * shards, [b["batch"]] * shards))
        wall = time.perf_counter() - t0
        rows.append({"section": "pairs", "experiment": exp, "shards": shards, "processes": workers,
                     "pairs": done, "seconds": wall, "pairs_per_s": done / wall})
    for r in rows:
        r["vs_1_shard"] = r["pairs_per_s"] / rows[0]["pairs_per_s"]
    log.info("pairs %s: %s pairs/s for %s shards", exp, [round(r["pairs_per_s"]) for r in rows], b["shards"])
    return rows


# ---- outputs ----------------------------------------------------------------------------------------
COLUMNS = {
    "sampling": ["experiment", "model", "batch", "nfe", "ms_per_sample", "samples_per_s", "speedup"],
    "training": ["experiment", "model", "batch", "it_per_s", "samples_per_s", "store_samples_per_s",
                 "read_over_consume"],
    "memory": ["experiment", "model", "pairs", "store_mb", "peak_rss_mb", "rss_anon_mb", "rss_file_mb", "vs_1x"],
    "pairs": ["experiment", "shards", "processes", "pairs", "seconds", "pairs_per_s", "vs_1_shard"],
}
TITLES = {
    "sampling": "Sampling throughput (speedup: teacher ms / student ms at the same batch)",
    "training": "Training throughput, and the store's read throughput for the same batches",
    "memory": "Peak RSS of a KDM training process against store size (the store is memory-mapped)",
    "pairs": "Teacher pair throughput against shard count (one one-thread process per shard, one per core)",
}


def markdown(table: pd.DataFrame, machine: str) -> str:
    parts = [f"# Benchmarks\n\n{machine}\n"]
    for section, cols in COLUMNS.items():
        part = table[table["section"] == section][cols].convert_dtypes()     # counts print as integers
        if len(part):
            parts.append(f"## {TITLES[section]}\n\n" + part.to_markdown(index=False, floatfmt=".4g") + "\n")
    return "\n".join(parts)


def run(stage, P):
    b, exps, deps = P["benchmark"], list(stage.args["experiments"].items()), stage.deps
    rows = []
    with tempfile.TemporaryDirectory(prefix="kdm-benchmark-") as tmp:
        stores = [open_pairset(s) for s in deps.stores]         # each checked once
        for i, (exp, seed) in enumerate(exps):
            models = {"teacher": deps.teachers[i], "kdm": deps.kdm[i], "kd": deps.kd[i]}
            rows += sampling(exp, models, stores[i].meta["sampler"], b["sampling"])
            rows += training(exp, stores[i], {"kdm": deps.kdm_configs[i], "kd": deps.kd_configs[i]}, seed,
                             b["training"])
        if exps:            # memory and sharding: on the first image experiment
            (exp, seed), store = exps[0], stores[0]
            rows += memory(exp, store, deps.kdm_configs[0], seed, b["memory"], Path(tmp))
            rows += pair_throughput(exp, deps.teachers[0], store.meta["sampler"], b["pairs"])
    table = pd.DataFrame(rows)
    machine = (f"Measured on {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
               f"device {device()}, torch {torch.__version__}, code {code_revision() or 'unknown'}; "
               f"{torch.get_num_threads()} threads for sampling and training.")
    with atomic_path(stage.outs.csv) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(stage.outs.md) as tmp:
        tmp.write_text(markdown(table, machine))
    plots.benchmarks(table, stage.outs.png)
