"""Our checkerboard KDM against the KDM authors' 2-D choices, one change at a time (docs/authors-code.md): every
variant trains the experiment's KDM student on the same pair store, at the same iterations and batch, for each
training seed, and is measured as the evaluate stage measures it (the experiment's evaluation noise,
kdm.metrics.Quality: in-support precision, mode coverage, sliced W2). Writes <out>.csv (one row per run) and
<out>.md (mean and spread per variant, and its difference from ours), after every run: run again, it resumes.
Outside the DAG, like tests/overhead.py.

    python tests/authors_ablation.py [--params params.yaml] [--experiment checkerboard] [--store DIR]
        [--iterations 3000] [--batch 1024] [--seeds 0 1 2] [--variants ours no-push ...]
        [--out results/authors-ablation]

The store is the experiment's (default results/<experiment>/store/, made by `snakemake --cores all
results/checkerboard/store`); the variants change only the `kdm` section, on top of params.yaml's.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))      # run as a script: the tests' workspace module beside it
from workspace import add_store_arguments, checkerboard_store, merge  # noqa: E402

from kdm import config, datasets  # noqa: E402
from kdm.device import device  # noqa: E402
from kdm.edm import seed_latents  # noqa: E402
from kdm.io import atomic_path  # noqa: E402
from kdm.metrics import Quality  # noqa: E402
from kdm.sampling import one_step  # noqa: E402
from kdm.training import student_setup, train_loop  # noqa: E402

# name -> (what the authors do, the kdm params that do it); file:line references in docs/authors-code.md
AUTHORS = {
    "no-push": ("push term for logging only: loss = rec + latent", {"loss_weights": {"push": 0.0}}),
    "latent-noise-0.4": ("latent noise 0.4", {"latent_noise": 0.4}),
    "lr-3e-4-constant": ("Adam lr 3e-4, constant", {"lr": 3.0e-4, "lr_schedule": "constant"}),
    "raw-weights": ("the raw weights sampled, not an EMA", {"ema": 0.0}),
    "time-input": ("a constant time input to E_0, E_T, D", {"net": {"time_input": True}}),
    "encoder-silu": ("the encoders end in a Swish", {"encoder_act": "silu"}),
    "epoch-order": ("batches by epoch-wise shuffling", {"data_order": "epochs"}),
}


# the authors' 2-D code takes x_T as it comes: N(0, 1) from their own teacher, 80 eps from ours (how their code saw
# our pairs in the comparison the issue reports); our E_T sees x_T / sigma_max unless scale_x_T is false
RAW_X_T = {"scale_x_T": False}


def variants() -> dict[str, tuple[str, dict]]:
    """Ours, each of the authors' choices alone, all of them together, and both with E_T on the raw x_T."""
    everything = {}
    for _, change in AUTHORS.values():
        everything = merge(everything, change)
    return {"ours": ("our params.yaml", {}), **AUTHORS, "authors": ("all of the above", everything),
            "raw-x_T": ("E_T on the raw x_T (80 eps)", RAW_X_T),
            "authors-raw-x_T": ("all of the authors' choices, E_T on the raw x_T", merge(everything, RAW_X_T))}


def evaluate(net, P: dict, on) -> dict:
    """The evaluate stage's measurement of a student: its samples from the experiment's evaluation noise (the
    teacher's evaluation x_T, seed by seed), in the stage's batches, through kdm.metrics.Quality."""
    ev = P["evaluate"]
    data = datasets.make(P["data"])
    seeds = np.arange(ev["seed_start"], ev["seed_start"] + ev["samples"], dtype=np.int64)
    x_T = P["sampler"]["sigma_max"] * seed_latents(seeds, config.data_shape(P["data"]))[0]
    return Quality(data, ev, None)(one_step(net.to(on), x_T, None, ev["batch"]), None)


def measure(params: dict, exp: str, store, iterations: int, batch: int, seeds, names, done: pd.DataFrame):
    """Train and measure every (variant, seed) not in `done` (the runs of an earlier, interrupted call with the
    same settings), yielding all runs so far after each new one."""
    on, rows = device(), done.to_dict("records")
    for name in names:
        what, change = variants()[name]
        p = merge(params[exp]["kdm"], change | {"iterations": iterations, "batch": batch, "checkpoint_every": 0})
        config.validate(merge(params, {exp: {"kdm": p}}), f"variant {name}")       # a clear error for a bad change
        for seed in seeds:
            if any(r["variant"] == name and r["seed"] == seed for r in rows):
                continue
            net, _, batch_losses, companions = student_setup("kdm", p, store, seed, on)
            started = time.perf_counter()
            model, _ = train_loop(net, batch_losses, p["loss_weights"], p, seed=seed, grad_clip=p["grad_clip"],
                                  desc=f"{name} s{seed}", companions=companions, on=on)
            seconds = time.perf_counter() - started
            q = evaluate(model, params[exp], on)
            rows.append({"variant": name, "change": what, "seed": seed, "iterations": iterations, "batch": batch,
                         **q, "train_seconds": seconds})
            print(f"{name} s{seed}: " + " ".join(f"{k}={v:.4g}" for k, v in q.items()), file=sys.stderr)
            yield pd.DataFrame(rows)


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread (sample std; 0 for one seed) per variant, and the mean's difference from ours."""
    metrics = ["precision", "coverage", "sw2"]
    g = runs.groupby("variant", sort=False)
    out = g[["change"]].first()
    for m in metrics:
        out[m] = [f"{a:.4f} ± {s:.4f}" for a, s in zip(g[m].mean(), g[m].std(ddof=1).fillna(0.0))]
    if "ours" in out.index:
        out["Δ precision vs ours"] = g["precision"].mean() - g["precision"].mean()["ours"]
    out["seeds"] = g["seed"].count()
    return out.reset_index()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_store_arguments(p)
    p.add_argument("--iterations", type=int, default=3000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--variants", nargs="+", default=list(variants()), choices=list(variants()))
    p.add_argument("--out", default="results/authors-ablation", help="writes OUT.csv and OUT.md")
    a = p.parse_args(argv)
    params, store_path, store = checkerboard_store(p, a)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    csv = out.with_suffix(".csv")
    done = pd.read_csv(csv) if csv.is_file() else pd.DataFrame(columns=["variant", "seed", "iterations", "batch"])
    same = (done["iterations"] == a.iterations) & (done["batch"] == a.batch)
    if not same.all():
        p.error(f"--out {out}: {csv} holds runs of other iterations or batch; choose another --out")
    for runs in measure(params, a.experiment, store, a.iterations, a.batch, a.seeds, a.variants, done):
        with atomic_path(csv) as tmp:       # after every run: an interrupted ablation resumes where it stopped
            runs.to_csv(tmp, index=False)
        with atomic_path(out.with_suffix(".md")) as tmp:
            tmp.write_text(f"# {a.experiment} KDM: our settings against the authors', one at a time\n\n"
                           f"Store {store_path} ({len(store)} pairs); {a.iterations} iterations at batch {a.batch}; "
                           f"metrics of the evaluate stage on its {params[a.experiment]['evaluate']['samples']} "
                           "evaluation samples (mean ± std over the training seeds run so far).\n\n"
                           + summary(runs).to_markdown(index=False, floatfmt="+.4f") + "\n")


if __name__ == "__main__":
    main()
