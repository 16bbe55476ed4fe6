"""evaluate: sample with a model on fresh noise and measure quality, speed and size.

The teacher is evaluated first (the quality limit): its samples are kept as a pair set so that every
student is evaluated on exactly the same noise and drawn beside the teacher in the analysis figure.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from kdm import datasets, metrics, plots
from kdm.edm import edm_sampler, nfe
from kdm.io import provenance, write_json
from kdm.nets import count_params
from kdm.pairset import open_pairset, write_pairset
from kdm.stages.pairs import sample, teacher_identity
from kdm.training import load_model

log = logging.getLogger("kdm.evaluate")


def quality(data, x0: torch.Tensor, ev: dict) -> dict:
    gen = torch.Generator().manual_seed(ev["metric_seed"])
    true = data.sample(len(x0), gen)
    cells = data.cell_of(x0)
    return {"precision": metrics.in_support_precision(cells),
            "coverage": metrics.mode_coverage(cells, data.n_modes),
            "sw2": metrics.sliced_w2(x0, true, ev["sw2_projections"], gen)}


def speed(sample_fn, shape, ev: dict) -> float:
    x_T = torch.randn((ev["speed_batch"],) + tuple(shape), generator=torch.Generator().manual_seed(0))
    return metrics.ms_per_sample(sample_fn, x_T, ev["speed_repeats"])


def run_teacher(stage, P):
    data, ev, sampler = datasets.make(P["data"]), P["evaluate"], P["sampler"]
    model_pt = stage.deps[0]
    net = load_model(model_pt)
    seeds = np.arange(ev["seed_start"], ev["seed_start"] + ev["samples"], dtype=np.int64)
    xT, x0 = sample(net, seeds, sampler, ev["batch"], desc=stage.name)
    (samples_dir,) = stage.outs
    write_pairset(samples_dir, {"x0": x0, "xT": xT, "seeds": seeds},
                  {"teacher": teacher_identity(model_pt), "sampler": sampler})

    def sample_fn(x_T):
        return edm_sampler(net, x_T, sampler["steps"], sampler["sigma_min"], sampler["sigma_max"], sampler["rho"])

    result = {"nfe": nfe(sampler["steps"]), "ms_per_sample": speed(sample_fn, net.data_shape, ev),
              "params": count_params(net), **quality(data, torch.from_numpy(x0), ev)}
    plots.scatter(x0, stage.plots[0], f"teacher ({result['nfe']} NFE)", lim=data.h * 1.25)
    return result


def run_student(stage, P):
    data, ev = datasets.make(P["data"]), P["evaluate"]
    model_pt, samples_dir = stage.deps
    net = load_model(model_pt)
    teacher = open_pairset(samples_dir)
    xT = torch.from_numpy(np.asarray(teacher["xT"]))
    with torch.inference_mode():
        x0 = net(xT)
    result = {"nfe": 1, "ms_per_sample": speed(net, net.data_shape, ev), "params": net.sampling_params(),
              "params_trained": count_params(net), **quality(data, x0, ev)}
    x0 = x0.numpy()
    scatter_png, analysis_png = stage.plots
    plots.scatter(x0, scatter_png, f"{stage.args['model']} (1 NFE)", lim=data.h * 1.25)
    rows = []
    for name, gen_x0 in ((stage.args["model"], x0), ("teacher", np.asarray(teacher["x0"]))):
        labels, outliers = metrics.clusters_and_outliers(gen_x0, k=data.n_modes, seed=ev["metric_seed"])
        rows.append((name, gen_x0, xT.numpy(), labels, outliers))
        if name != "teacher":
            result["outlier_share"] = float(outliers.mean())
    plots.analysis(rows, analysis_png, lim=data.h * 1.25)
    return result


def run(stage, P):
    model = stage.args["model"]
    torch.set_grad_enabled(False)
    result = run_teacher(stage, P) if model == "teacher" else run_student(stage, P)
    result = {"experiment": stage.args["exp"], "model": model, "seed": stage.args.get("seed"),
              "samples": P["evaluate"]["samples"], "speed_batch": P["evaluate"]["speed_batch"], **result,
              "provenance": provenance()}
    log.info("%s: %s", stage.name, {k: v for k, v in result.items() if k != "provenance"})
    write_json(stage.metrics[0], result)
