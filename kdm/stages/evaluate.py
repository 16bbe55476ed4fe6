"""evaluate: sample with a model on fresh noise and measure quality, speed and size.

The teacher is evaluated first (the quality limit): its samples are kept as a pair set so that every
student is evaluated on exactly the same noise (and requested labels) and drawn beside the teacher.
Quality is in-support precision, mode coverage and sliced W2 for 2-D data; FID, KID, precision and
recall through torch-fidelity for images with the experiment's classifier as the feature extractor, plus
class_acc for conditional models; with Inception, FID against the reference statistics (EDM's protocol).
With the classifier the evaluator's own floor is measured too (`data`): FID of resampled real images
against the real set, and of two disjoint halves of it.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from kdm import datasets, metrics, plots
from kdm.edm import edm_sampler, nfe
from kdm.io import provenance, read_json, write_json
from kdm.nets import count_params
from kdm.pairset import open_pairset, write_pairset
from kdm.stages.pairs import sample, teacher_identity
from kdm.training import device, load_model

log = logging.getLogger("kdm.evaluate")


class Quality:
    """The experiment's quality metrics for a batch of samples (and the labels they were asked for)."""

    def __init__(self, stage, data, ev: dict):
        self.data, self.ev = data, ev
        self.classifier = self.reference = None
        if not data.images:
            return
        from kdm.fidelity import resolve_extractor
        if ev["extractor"]["kind"] == "classifier":
            classifier_pt, classifier_metrics = stage.deps[-2:]
            self.classifier = load_model(classifier_pt)
            self.extractor, self.weights = resolve_extractor(ev["extractor"], classifier_pt)
            self.heldout_accuracy = read_json(classifier_metrics)["heldout_accuracy"]
            self.described = f"{self.extractor} (held-out acc {self.heldout_accuracy:.3f})"
        else:
            from kdm.frechet import load_statistics
            self.extractor, self.weights = resolve_extractor(ev["extractor"], None)
            self.reference = load_statistics(stage.deps[-1], "the reference stage's output")
            self.described = f"{self.extractor} (FID against reference statistics)"

    def __call__(self, x0: torch.Tensor, labels: torch.Tensor | None) -> dict:
        if not self.data.images:
            return self.points(x0)
        return self.frechet(x0) if self.classifier is None else self.images(x0, labels, self.data.x)

    def points(self, x0) -> dict:
        gen = torch.Generator().manual_seed(self.ev["metric_seed"])
        true, _ = self.data.sample(len(x0), gen)
        cells = self.data.cell_of(x0)
        return {"precision": metrics.in_support_precision(cells),
                "coverage": metrics.mode_coverage(cells, self.data.n_modes),
                "sw2": metrics.sliced_w2(x0, true, self.ev["sw2_projections"], gen)}

    def images(self, x0, labels, reference) -> dict:
        from kdm.fidelity import accuracy, fidelity_metrics
        out = fidelity_metrics(x0, reference, self.extractor, self.weights, kid_subset=self.ev["kid_subset"],
                               prc_neighborhood=self.ev["prc_neighborhood"])
        if labels is not None:
            out["class_acc"] = accuracy(self.classifier, x0, labels)
        return {**out, "extractor": self.described}

    def frechet(self, x0) -> dict:
        from kdm.frechet import fid, inception_features, statistics
        features = inception_features(x0, self.weights, self.ev["batch"])
        return {"fid": fid(statistics(features), self.reference), "extractor": self.described}

    def draw(self, x0: np.ndarray, labels, path, title: str) -> None:
        if self.data.images:
            plots.image_grid(x0[:100], path, title, labels=None if labels is None else labels[:100])
        else:
            plots.scatter(x0, path, title, lim=self.data.h * 1.25)


def speed(sample_fn, shape, ev: dict) -> float:
    x_T = torch.randn((ev["speed_batch"],) + tuple(shape), generator=torch.Generator().manual_seed(0))
    return metrics.ms_per_sample(sample_fn, x_T.to(device()), ev["speed_repeats"])


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


def _labels(arrays) -> torch.Tensor | None:
    return torch.from_numpy(np.asarray(arrays["labels"])) if "labels" in arrays else None


def run_teacher(stage, P, quality: Quality):
    ev, sampler = P["evaluate"], P["sampler"]
    model_pt = stage.deps[0]
    net = load_model(model_pt, to=device())
    seeds = np.arange(ev["seed_start"], ev["seed_start"] + ev["samples"], dtype=np.int64)
    arrays = sample(net, seeds, sampler, ev["batch"], desc=stage.name)
    (samples_dir,) = stage.outs
    write_pairset(samples_dir, arrays, {"teacher": teacher_identity(model_pt, net), "sampler": sampler})
    labels = _labels(arrays)
    result = {"nfe": nfe(sampler["steps"]), "ms_per_sample": teacher_speed(net, sampler, ev),
              "params": count_params(net), **quality(torch.from_numpy(arrays["x0"]), labels)}
    quality.draw(arrays["x0"], labels, stage.plots[0], f"teacher ({result['nfe']} NFE)")
    return result


def run_student(stage, P, quality: Quality):
    """The student on the teacher's evaluation noise; its speed is measured beside the teacher's, in this
    process, so that the speedup is a ratio of two timings taken together."""
    ev = P["evaluate"]
    model_pt, config_json, samples_dir, teacher_pt = stage.deps[:4]
    on = device()
    net = load_model(model_pt, to=on)
    teacher = open_pairset(samples_dir)
    xT, labels = torch.from_numpy(np.asarray(teacher["xT"])), _labels(teacher.arrays)
    with torch.inference_mode():
        x0 = torch.cat([net(xT[i:i + ev["batch"]].to(on), None if labels is None else labels[i:i + ev["batch"]].to(on))
                        .cpu() for i in range(0, len(xT), ev["batch"])])
    labels_s = speed_labels(net, ev)
    ms = speed(lambda x: net(x, labels_s), net.data_shape, ev)
    trained = read_json(config_json)
    result = {"nfe": 1, "ms_per_sample": ms,
              "speedup": teacher_speed(load_model(teacher_pt, to=on), P["sampler"], ev) / ms,
              "params": net.sampling_params(), "params_trained": count_params(net),
              "iterations": trained["params"][stage.args["model"]]["iterations"],
              "train_minutes": trained["train_seconds"] / 60, **quality(x0, labels)}
    x0 = x0.numpy()
    samples_png, analysis_png = stage.plots
    name = stage.args["model"]
    quality.draw(x0, labels, samples_png, f"{name} (1 NFE)")
    teacher_x0 = np.asarray(teacher["x0"])
    if quality.data.images:         # the same noise through both: teacher above, student below
        plots.image_pairs(teacher_x0[:16], x0[:16], analysis_png, ("teacher", name))
        return result
    rows = []
    for who, gen_x0 in ((name, x0), ("teacher", teacher_x0)):
        clusters, outliers = metrics.clusters_and_outliers(gen_x0, k=quality.data.n_modes, seed=ev["metric_seed"])
        rows.append((who, gen_x0, xT.numpy(), clusters, outliers))
        if who != "teacher":
            result["outlier_share"] = float(outliers.mean())
    plots.analysis(rows, analysis_png, lim=quality.data.h * 1.25)
    return result


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
    quality.draw(data.x[idx].numpy(), None if labels is None else labels.numpy(), stage.plots[0], "real data")
    for path, model, n, result in ((stage.metrics[0], "data-resampled", ev["samples"], resampled),
                                   (stage.metrics[1], "data-halves", half, halves)):
        _write(stage, path, model, n, {"nfe": 0, **result}, P)


def _write(stage, path, model, samples, result, P):
    result = {"experiment": stage.args["exp"], "model": model, "seed": stage.args.get("seed"), "samples": samples,
              **({"speed_batch": P["evaluate"]["speed_batch"]} if "ms_per_sample" in result else {}), **result,
              "provenance": provenance()}
    log.info("%s: %s", stage.name, {k: v for k, v in result.items() if k != "provenance"})
    write_json(path, result)


def run(stage, P):
    model = stage.args["model"]
    torch.set_grad_enabled(False)
    quality = Quality(stage, datasets.make(P["data"]), P["evaluate"])
    if model == "data":
        return run_data(stage, P, quality)
    result = run_teacher(stage, P, quality) if model == "teacher" else run_student(stage, P, quality)
    _write(stage, stage.metrics[0], model, P["evaluate"]["samples"], result, P)
