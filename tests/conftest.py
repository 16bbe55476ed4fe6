"""Shared fixtures: tiny params for fast end-to-end runs, and a tiny teacher."""
import copy
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def tiny_params() -> dict:
    """The default params shrunk to seconds: the same keys, tiny budgets."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    exp = copy.deepcopy(params["checkerboard"])
    exp["teacher"].update(iterations=40, batch=256, log_every=10)
    exp["teacher"]["net"].update(hidden=32, layers=3)
    exp["sampler"]["steps"] = 6
    exp["pairs"].update(count=512, shards=2, batch=128)
    for student in ("kdm", "kd"):
        exp[student].update(iterations=30, batch=64, log_every=10, net={"kind": "mlp", "hidden": 32, "layers": 3})
    exp["kdm"]["latent_dim"] = 16
    exp["evaluate"].update(samples=500, batch=500, speed_repeats=2, sw2_projections=16)
    return {"experiments": ["checkerboard"], "checkerboard": exp}


TINY_UNET = {"kind": "unet", "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [],
             "dropout": 0.0}


def tiny_digits(name: str = "digits-cond") -> dict:
    """A shipped digits experiment shrunk to seconds: tiny UNets, a few iterations, 128 pairs."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    exp = copy.deepcopy(params[name])
    exp["classifier"].update(iterations=30, log_every=10)
    exp["teacher"].update(iterations=20, batch=32, log_every=10, net=dict(TINY_UNET))
    exp["sampler"]["steps"] = 4
    exp["pairs"].update(count=128, shards=2, batch=64)
    for student in ("kdm", "kd"):
        exp[student].update(iterations=10, batch=32, log_every=5, net=dict(TINY_UNET))
    exp["kdm"]["adversary"]["widths"] = [8, 16]
    exp["evaluate"].update(samples=200, batch=100, speed_batch=32, speed_repeats=1, kid_subset=100)
    return {"experiments": [name], name: exp}


@pytest.fixture
def params():
    return tiny_params()


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    # the CLI's subprocesses: one thread each keeps runs comparable and the suite quick on 2 cores
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
