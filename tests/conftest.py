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
    exp["teacher"].update(iterations=40, batch=256, log_every=10, net={"hidden": 32, "layers": 3})
    exp["sampler"]["steps"] = 6
    exp["pairs"].update(count=512, shards=2, batch=128)
    for student in ("kdm", "kd"):
        exp[student].update(iterations=30, batch=64, log_every=10, net={"hidden": 32, "layers": 3})
    exp["kdm"]["latent_dim"] = 16
    exp["evaluate"].update(samples=500, batch=500, speed_repeats=2, sw2_projections=16)
    return {"experiments": ["checkerboard"], "checkerboard": exp}


@pytest.fixture
def params():
    return tiny_params()


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    # the CLI's subprocesses: one thread each keeps runs comparable and the suite quick on 2 cores
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
