"""evaluate: sample with a model on fresh noise and measure quality, speed and size.

The teacher is evaluated first (the quality limit): its samples are kept as a pair set so that every
student is evaluated on exactly the same noise (and requested labels) and drawn beside the teacher.
Quality is in-support precision, mode coverage and sliced W2 for 2-D data; FID, KID, precision and
recall through torch-fidelity for images with the experiment's classifier as the feature extractor, plus
class_acc for conditional models; with Inception, FID against the reference statistics (EDM's protocol).
With the classifier the evaluator's own floor is measured too (`data`): FID of resampled real images
against the real set, and of two disjoint halves of it.

EDM's protocol measures FID on three disjoint seed ranges and reports the minimum: with `evaluate.seed_sets` K,
the teacher samples K ranges of `samples` seeds, every student is measured on the same K ranges, and each metric
is written as its mean over the ranges, with (K > 1) its spread and, for distances, its minimum.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from kdm import datasets, plots, proximity
from kdm.device import device
from kdm.edm import nfe
from kdm.io import read_json, write_json
from kdm.metrics import Quality, border_distances, clusters_and_outliers
from kdm.models import load_model
from kdm.nets import count_params
from kdm.pairset import open_pairset, write_pairset
from kdm.provenance import provenance
from kdm.sampling import one_step, requested_labels, sample, speed, speed_labels, teacher_identity, teacher_speed

log = logging.getLogger("kdm.evaluate")

DISTANCES = ("fid", "kid", "sw2")       # lower is better: their minimum over seed sets is EDM's reported number


def draw(data, x0: np.ndarray, labels, path, title: str) -> None:
    if data.images:
        plots.image_grid(x0[:100], path, title, labels=None if labels is None else labels[:100])
    else:
        plots.scatter(x0, path, title, lim=data.h * 1.25)


def over_seed_sets(quality: Quality, x0: torch.Tensor, labels, ev: dict) -> dict:
    """The quality of each of the `seed_sets` consecutive blocks of `samples` (disjoint seed ranges), as its mean
    over the sets; with several sets also its sample std over them (`<metric>_sets_std`) and, for distances, the
    minimum (`<metric>_min`)."""
    n, k = ev["samples"], ev["seed_sets"]
    sets = [quality(x0[i * n:(i + 1) * n], None if labels is None else labels[i * n:(i + 1) * n]) for i in range(k)]
    out = {"seed_sets": k}
    for key, value in sets[0].items():
        if isinstance(value, str):      # what measured it (the extractor): the same for every set
            out[key] = value
            continue
        values = np.array([s[key] for s in sets], dtype=np.float64)
        out[key] = float(values.mean())
        if k > 1:
            out[f"{key}_sets_std"] = float(values.std(ddof=1))
            if key in DISTANCES:
                out[f"{key}_min"] = float(values.min())
    return out


def run_teacher(stage, P, quality: Quality):
    ev, sampler = P["evaluate"], P["sampler"]
    model_pt = stage.deps.teacher
    net = load_model(model_pt, to=device())
    seeds = np.arange(ev["seed_start"], ev["seed_start"] + ev["samples"] * ev["seed_sets"], dtype=np.int64)
    arrays = sample(net, seeds, sampler, ev["batch"], desc=stage.name)
    write_pairset(stage.outs.samples, arrays, {"teacher": teacher_identity(model_pt, net), "sampler": sampler})
    labels = requested_labels(arrays)
    result = {"nfe": nfe(sampler["steps"]), "ms_per_sample": teacher_speed(net, sampler, ev),
              "params": count_params(net), **over_seed_sets(quality, torch.from_numpy(arrays["x0"]), labels, ev)}
    draw(quality.data, arrays["x0"], labels, stage.plots.grid, f"teacher ({result['nfe']} NFE)")
    return result


def run_student(stage, P, quality: Quality):
    """The student on the teacher's evaluation noise; its speed is measured beside the teacher's, in this
    process, so that the speedup is a ratio of two timings taken together."""
    ev = P["evaluate"]
    on = device()
    net = load_model(stage.deps.model, to=on)
    teacher = open_pairset(stage.deps.teacher_samples)
    xT, labels = torch.from_numpy(np.asarray(teacher["xT"])), requested_labels(teacher.arrays)
    x0 = one_step(net, xT, labels, ev["batch"])
    labels_s = speed_labels(net, ev)
    ms = speed(lambda x: net(x, labels_s), net.data_shape, ev)
    trained = read_json(stage.deps.config)
    result = {"nfe": 1, "ms_per_sample": ms,
              "speedup": teacher_speed(load_model(stage.deps.teacher, to=on), P["sampler"], ev) / ms,
              "params": net.sampling_params(), "params_trained": count_params(net),
              "iterations": trained["params"][stage.args["model"]]["iterations"],
              "train_minutes": trained["train_seconds"] / 60, **over_seed_sets(quality, x0, labels, ev)}
    name = stage.args["model"]
    result["latent"] = latent_analysis(net, xT, x0, labels, quality, P, stage.plots.latent, f"{name} (1 NFE)")
    x0 = x0.numpy()
    draw(quality.data, x0, labels, stage.plots.grid, f"{name} (1 NFE)")
    teacher_x0 = np.asarray(teacher["x0"])
    if quality.data.images:         # the same noise through both: teacher above, student below
        plots.image_pairs(teacher_x0[:16], x0[:16], stage.plots.analysis, ("teacher", name))
        return result
    rows = []
    for who, gen_x0 in ((name, x0), ("teacher", teacher_x0)):
        clusters, outliers = clusters_and_outliers(gen_x0, k=quality.data.n_modes, seed=ev["metric_seed"])
        rows.append((who, gen_x0, xT.numpy(), clusters, outliers))
        if who != "teacher":
            result["outlier_share"] = float(outliers.mean())
            result.update(border_distances(xT.numpy(), clusters, outliers))
    plots.analysis(rows, stage.plots.analysis, lim=quality.data.h * 1.25)
    return result


def latent_analysis(net, xT: torch.Tensor, x0: torch.Tensor, labels, quality: Quality, P, path, title) -> dict:
    """Proximity against semantics (kdm/proximity.py) on the first `analysis.samples` of the evaluation: in x_T,
    a random projection of it (a control), and KDM's z_T, C z_T and z_0 of its own samples; labels from the
    evaluator (and, conditional, the requested ones). Writes latent.png; returns what goes into metrics.json."""
    an = P["analysis"]
    n = an["samples"]
    xT, x0 = xT[:n], x0[:n]
    names = [s for s in an["spaces"] if s in ("x_T", "x_T_projected") or hasattr(net, "latents")]
    flat = xT.flatten(1).numpy()
    spaces = {"x_T": flat}
    if hasattr(net, "latents"):         # KDM
        on, batch = next(net.parameters()).device, P["evaluate"]["batch"]
        ys = [None] * len(xT.split(batch)) if labels is None else labels[:n].split(batch)
        parts = [net.latents(a.to(on), b.to(on), None if y is None else y.to(on))
                 for a, b, y in zip(xT.split(batch), x0.split(batch), ys)]
        spaces.update({k: torch.cat([p[k] for p in parts]).cpu().numpy() for k in parts[0]})
    dim = spaces["z_T"].shape[1] if "z_T" in spaces else flat.shape[1]
    spaces["x_T_projected"] = proximity.random_projection(flat, dim, an["seed"])
    spaces = {s: spaces[s] for s in names}
    predicted, features, described = quality.semantics(x0, an["clusters"], an["seed"])
    sets = {"label": predicted} | ({} if labels is None else {"requested": labels[:n].numpy()})
    out = proximity.proximity(spaces, sets, features, an["knn"], an["pairs"], an["seed"])
    m = an["plot_samples"]
    plots.latent({s: proximity.embeddings(p[:m], an["seed"]) for s, p in spaces.items()}, predicted[:m],
                 out["spaces"], path, f"{title}: {m} samples coloured by {described}")
    return {"labels": described, "samples": n, **out}


def run_data(stage, P, quality: Quality) -> None:
    """The evaluator's floor on real images: resampled real vs the real set, and two disjoint halves.
    For a conditional experiment, class_acc of real data is the classifier's held-out accuracy (most
    resampled images are ones it was trained on)."""
    ev, data = P["evaluate"], quality.data
    gen = torch.Generator().manual_seed(ev["metric_seed"])
    idx = torch.randint(len(data.x), (ev["samples"],), generator=gen)
    labels = data.y[idx] if data.label_dim else None
    resampled = quality.images(data.x[idx], None, data.x)
    if data.label_dim:
        resampled["class_acc"] = quality.heldout_accuracy
    perm = torch.randperm(len(data.x), generator=gen)
    half = len(data.x) // 2
    halves = quality.images(data.x[perm[:half]], None, data.x[perm[half:]])
    draw(data, data.x[idx].numpy(), None if labels is None else labels.numpy(), stage.plots.grid, "real data")
    for path, model, n, result in ((stage.metrics.resampled, "data-resampled", ev["samples"], resampled),
                                   (stage.metrics.halves, "data-halves", half, halves)):
        _write(stage, path, model, n, {"nfe": 0, **result}, P)


def _write(stage, path, model, samples, result, P):
    result = {"experiment": stage.args["exp"], "model": model, "seed": stage.args.get("seed"), "samples": samples,
              "reference": P["evaluate"]["reference_name"],
              **({"speed_batch": P["evaluate"]["speed_batch"]} if "ms_per_sample" in result else {}), **result,
              "provenance": provenance()}
    log.info("%s: %s", stage.name, {k: v for k, v in result.items() if k != "provenance"})
    write_json(path, result)


def run(stage, P):
    model = stage.args["model"]
    torch.set_grad_enabled(False)
    quality = Quality(datasets.make(P["data"]), P["evaluate"], stage.deps)
    if model == "data":
        return run_data(stage, P, quality)
    result = run_teacher(stage, P, quality) if model == "teacher" else run_student(stage, P, quality)
    _write(stage, stage.metrics.metrics, model, P["evaluate"]["samples"], result, P)
