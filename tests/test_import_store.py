"""Imported pair sets as the store's source (pairs.source: import): no pair-shard stages, the store stage
imports, and the import must fit the teacher the students are evaluated beside."""
import re
import sys

import numpy as np
import pytest
import torch

from kdm import dag
from kdm.datasets import Digits
from kdm.pairset import open_pairset

from conftest import tiny_digits
from workspace import Workspace

EXP = "digits"
N = 128


def write_get(root, n=N, shape=(1, 8, 8), label_dim=0):
    """One GPU's GET chunk (generate.py: a chunk per 50 batches, named by its last seed): unit noise and
    teacher-like images (real digits here), labels one-hot beside the noise when conditional."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, *shape, generator=g)
    x = Digits(conditional=False).x[:n].double() if shape == (1, 8, 8) else torch.rand(n, *shape, generator=g)
    for d in ("latent", "image"):
        (root / d).mkdir(parents=True)
    latent = [z, torch.eye(label_dim)[torch.arange(n) % label_dim]] if label_dim else z
    torch.save(latent, root / "latent" / f"{n - 1:09d}.pkl")
    torch.save(x, root / "image" / f"{n - 1:09d}.pkl")
    return root


def imported(path) -> dict:
    params = tiny_digits(EXP)
    params[EXP]["classifier"]["iterations"] = 10        # the evaluator is not what this tests
    params[EXP]["evaluate"].update(samples=100, kid_subset=50)
    params[EXP].pop("rederive", None)                  # imported pairs record no teacher to re-sample
    params[EXP]["pairs"] = {"source": "import", "format": "get", "path": str(path), "sigma_max": 80.0,
                            "options": {"seed_start": 0, "batch": 64, "world_size": 1}}
    return params


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("import")
    (root / "ws").mkdir()
    ws = Workspace(root / "ws", imported(write_get(root / "get")))
    ws.snakemake()
    return ws, root


def test_imported_pairs_run_through_the_pipeline_to_the_table(built):
    ws, root = built
    names = [s.name for s in dag.stages(imported(root / "get"))]
    assert not [n for n in names if "-pairs-" in n] and f"{EXP}-store" in names
    store = open_pairset(ws.path / dag.store_dir(EXP))
    assert len(store) == N and store.meta["source"]["format"] == "get" and store.meta["teacher"]["label_dim"] == 0
    np.testing.assert_array_equal(store["x0"], Digits(conditional=False).x[:N].numpy())
    table = (ws.path / "results/table.csv").read_text()
    assert f"{EXP},kdm" in table and f"{EXP},kd," in table
    assert not (ws.path / "results" / EXP / "pairs").exists()
    dry = ws.snakemake("-n").stdout
    assert "Nothing to be done" in dry or "nothing to be done" in dry.lower(), dry


def run_store(ws, params):
    ws.write_params(params, dvc_yaml=False)
    r = ws.run(sys.executable, "-m", "kdm", "store", EXP, check=False)
    return r.returncode, r.stdout + r.stderr


def test_imports_that_do_not_fit_the_teacher_are_refused(built):
    ws, root = built
    before = (ws.path / dag.store_dir(EXP) / "manifest.json").read_text()
    cases = {"cond": (write_get(root / "cond", label_dim=10), "label_dim"),
             "rgb": (write_get(root / "rgb", shape=(3, 8, 8)), r"holds samples of shape \(3, 8, 8\), but the teacher"),
             "absent": (root / "absent", "pairs.path: .* does not exist")}
    for name, (path, fragment) in cases.items():
        rc, out = run_store(ws, imported(path))
        assert rc == 1 and "pairs.path: " in out and re.search(fragment, out), (name, out)
        assert (ws.path / dag.store_dir(EXP) / "manifest.json").read_text() == before, "the old store stays whole"
        assert not list((ws.path / "results" / EXP).glob(".store.tmp-*"))
    ws.write_params(imported(root / "get"), dvc_yaml=False)
    r = ws.run(sys.executable, "-m", "kdm", "pairs", EXP, "0", check=False)
    # imported pairs have no shards: the error lists the stages the experiment has, none of them pairs
    assert r.returncode == 2 and f"{EXP}-pairs-0: " in r.stderr and "no such stage" in r.stderr, r.stderr
    assert f"{EXP}-store" in r.stderr and f"{EXP}-pairs-" not in r.stderr.split("its stages are:")[1]
