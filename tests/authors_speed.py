"""Our checkerboard KDM training step against the KDM authors' released train loop, side by side in one run: their
TrainLoop.train() unmodified (trainer/trainer.py: their DataLoader and batch sampler, forward, the three no-grad
decodes, backward, nan_to_num, Adam, their EMA) on their KoopmanDistillModelCheckerBoard, built as their
utils/loading_models.py builds it for the checkerboard; ours, kdm.training.train_loop on the experiment's KDM at
each precision. The same pairs (the experiment's store, written for them as their .npy of [x_T, x_0]), the same
network width, batch and threads. Per-step times as `python -m kdm profile` takes them (kdm.profiling: the
difference of runs of 2 and 2 + steps iterations, the fastest of 3 each). Writes <out>.csv and <out>.md.
Outside the DAG, like tests/authors_ablation.py.

    python tests/authors_speed.py --authors-src PATH [--params params.yaml] [--experiment checkerboard]
        [--threads 1 2] [--steps 30] [--workers 0] [--precisions fp32 bf16] [--out results/authors-speed]

PATH: a checkout of github.com/azencot-group/KDM (not downloaded here). Their trainer imports piq and
pytorch-image-generation-metrics (for image data only): `pip install -e ".[authors]"`.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))      # run as a script: the tests' workspace module beside it
from workspace import add_store_arguments, checkerboard_store  # noqa: E402

from kdm.io import atomic_path  # noqa: E402
from kdm.profiling import Trainer, seconds_per_step  # noqa: E402


def authors_trainer(src: Path, npy: Path, hidden: int, batch: int, workers: int, out: Path):
    """run(iterations) -> seconds of their TrainLoop.train() for that many iterations, a fresh model each time."""
    sys.path.insert(0, str(src))
    try:
        from data.data_loading.data_loaders import load_data
        from trainer.trainer import TrainLoop
        from utils.loading_models import create_distillation_model
        from utils.loggers import PrintLogger
        from utils.names import Datasets, DistillationModels, RecLossType
    except ImportError as e:
        raise SystemExit(f"--authors-src {src}: their trainer does not import ({e}); expected a checkout of "
                         "github.com/azencot-group/KDM and `pip install -e \".[authors]\"`")
    args = SimpleNamespace(distillation_model=DistillationModels.OneStepKOD, dataset=Datasets.Checkerboard,
                           input_dim=2, hidden_dim=hidden, rec_loss_type=RecLossType.L2)

    def run(iterations: int) -> float:
        model = create_distillation_model(args.distillation_model, args)
        train_data, test_data = load_data(Datasets.Checkerboard, str(npy), "", batch, workers)
        loop = TrainLoop(model=model, train_data=train_data, test_data=test_data, batch_size=batch,
                         device=torch.device("cpu"), output_dir=str(out), logger=PrintLogger(),
                         dataset_name=Datasets.Checkerboard, iterations=iterations, print_every=1 << 30,
                         data_shape=(2,))
        t0 = time.perf_counter()
        loop.train()
        return time.perf_counter() - t0
    return run


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--authors-src", type=Path, required=True, help="a checkout of azencot-group/KDM")
    add_store_arguments(p)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=30, help="steps timed per run")
    p.add_argument("--repeats", type=int, default=3, help="runs of each length; the fastest counts")
    p.add_argument("--workers", type=int, default=0, help="their DataLoader's num_workers (0: in the timed process)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--out", default="results/authors-speed", help="writes OUT.csv and OUT.md")
    a = p.parse_args(argv)
    params, store_path, store = checkerboard_store(p, a)
    if not (a.authors_src / "trainer" / "trainer.py").is_file():
        p.error(f"--authors-src {a.authors_src}: no trainer/trainer.py; expected a checkout of azencot-group/KDM")
    ours = params[a.experiment]["kdm"]
    hidden, batch = ours["net"]["hidden"], ours["batch"]
    if ours["latent_dim"] != hidden:
        p.error(f"{a.experiment}.kdm: latent_dim {ours['latent_dim']} differs from net.hidden {hidden}; the "
                "authors' checkerboard model has one width for both")
    rows = []
    with tempfile.TemporaryDirectory(prefix="kdm-authors-speed-") as tmp:
        npy = Path(tmp) / "pairs.npy"       # their CheckerboardDataset: [time, N, 2], x_T first and x_0 last
        np.save(npy, np.stack([np.asarray(store["xT"]), np.asarray(store["x0"])]))
        theirs = authors_trainer(a.authors_src, npy, hidden, batch, a.workers, Path(tmp))
        for threads in a.threads:
            torch.set_num_threads(threads)
            runs = {"authors (trainer/trainer.py)": ("fp32", theirs)}
            for precision in a.precisions:
                runs[f"ours {precision}"] = (precision, Trainer("kdm", {**ours, "precision": precision}, store,
                                                                torch.device("cpu")))
            for code, (precision, run) in runs.items():
                run(2 + a.steps)                                # warm-up
                seconds = seconds_per_step(run, a.steps, a.repeats)
                rows.append({"threads": threads, "code": code, "precision": precision, "batch": batch,
                             "hidden": hidden, "ms_per_step": 1e3 * seconds, "it_per_s": 1 / seconds})
                print(f"{threads} threads, {code}: {1e3 * seconds:.1f} ms/step", file=sys.stderr)
    df = pd.DataFrame(rows)
    base = df[df["code"].str.startswith("authors")].set_index("threads")["ms_per_step"]
    df["speedup_vs_authors"] = df["threads"].map(base) / df["ms_per_step"]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out.with_suffix(".csv")) as f:
        df.to_csv(f, index=False)
    with atomic_path(out.with_suffix(".md")) as f:
        f.write_text(f"# {a.experiment} KDM training step: ours against the authors' train loop\n\n"
                     f"Same pairs ({store_path}, {len(store)}), width {hidden}, batch {batch}; their DataLoader with "
                     f"num_workers={a.workers}; per step: runs of 2 and {2 + a.steps} iterations, the fastest of "
                     f"{a.repeats} each; torch {torch.__version__}.\n\n"
                     + df.to_markdown(index=False, floatfmt=".3g") + "\n")


if __name__ == "__main__":
    main()
