"""Pair sets checked against their teacher (`python -m kdm verify EXP --rederive N`): re-sampling seeds with the
recorded teacher and sampler gives the store's bytes, and a flipped x_0 value, a shuffled seed, a changed label,
another teacher and an imported set without a teacher are each caught and named - also when the manifest's
hashes were rewritten to fit (what the plain byte check cannot see)."""
import json
import shutil
import sys

import numpy as np
import pytest
import torch
import yaml

from kdm import dag
from kdm.models import load_model, save_model
from kdm.pairset import card, open_pairset, write_pairset
from kdm.provenance import code_revision
from kdm.sampling import rederive

from conftest import tiny_digits
from workspace import Workspace

EXP = "digits-cond"
REPORT = dag.rederive(EXP).metrics.report


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("rederive"), tiny_digits(EXP))      # 128 conditional pairs
    ws.snakemake(dag.store_dir(EXP), f"results/{EXP}/eval/teacher/samples", REPORT)
    return ws


def forged(ws, tmp_path, change) -> object:
    """A copy of the store with `change(arrays, meta)` applied and a manifest whose hashes fit the new bytes."""
    store = open_pairset(ws.path / dag.store_dir(EXP))
    arrays = {name: np.array(store[name]) for name in store.arrays}
    meta = {**store.meta, "teacher": {**store.meta["teacher"], "path": str(ws.path / store.meta["teacher"]["path"])}}
    change(arrays, meta)
    write_pairset(tmp_path / "store", arrays, meta)
    return open_pairset(tmp_path / "store", check="full")


def cli(ws, *args):
    r = ws.run(sys.executable, "-m", "kdm", "verify", EXP, *args, check=False)
    return r.returncode, r.stdout + r.stderr


def test_a_clean_store_rederives_bitwise(ws):
    rc, out = cli(ws, "--rederive", "16", "--seed", "3")
    assert rc == 0, out
    assert "(as recorded)" in out and "16 seeds drawn with --seed 3" in out and out.count("(bitwise equal)") == 3
    assert "rederive: ok" in out and "FAILED" not in out


@pytest.mark.parametrize("change, array, seeds, caught", [       # the store's seeds are 0..127, row by row
    (lambda a, m: a["x0"].__setitem__((5, 0, 3, 3), a["x0"][5, 0, 3, 3] + 1e-3), "x0", [5], 1),
    # rows 7 and 9 now claim each other's seed: their noise, label and sample all differ from the seed's
    (lambda a, m: a["seeds"].__setitem__([7, 9], a["seeds"][[9, 7]]), "xT", [9, 7], 3),
    (lambda a, m: a["labels"].__setitem__(11, (a["labels"][11] + 1) % 10), "labels", [11], 1),
])
def test_forged_pairs_are_caught_naming_their_seeds(ws, tmp_path, change, array, seeds, caught):
    store = forged(ws, tmp_path, change)
    ok, lines, _ = rederive(store, len(store), seed=0)
    assert not ok
    (line,) = [line for line in lines if line.startswith(f"{array}:")]
    assert f"{len(seeds)} seeds beyond 0: {', '.join(map(str, seeds))}" in line, lines
    assert sum("seeds beyond" in line for line in lines) == caught, lines


def test_another_teacher_and_an_imported_set_are_refused(ws, tmp_path):
    teacher = load_model(ws.path / "results" / EXP / "teacher/model.pt")
    with torch.no_grad():
        next(teacher.parameters()).add_(1e-3)
    other = tmp_path / "other.pt"
    save_model(other, "teacher", torch.load(ws.path / "results" / EXP / "teacher/model.pt")["kwargs"], teacher,
               teacher.data_shape)
    store = forged(ws, tmp_path, lambda a, m: m["teacher"].update(path=str(other)))
    ok, lines, _ = rederive(store, 4, seed=0)
    assert not ok and "not the teacher that made them" in lines[0]
    shutil.rmtree(tmp_path / "store")
    store = forged(ws, tmp_path, lambda a, m: m.update(source={"format": "get", "path": "/data/get"}))
    ok, lines, _ = rederive(store, 4, seed=0)
    assert not ok and "records no teacher that made it" in lines[0]
    ok, lines, _ = rederive(store, 4, seed=0, teacher=ws.path / "results" / EXP / "teacher/model.pt")
    assert ok, lines                # the experiment's own teacher made these (they are the store's own pairs)


def test_more_seeds_than_the_store_holds_is_refused(ws):
    rc, out = cli(ws, "--rederive", "129")
    assert rc == 2 and "--rederive 129: the pair set holds 128 pairs" in out, out


def test_every_pair_set_has_a_card_made_from_its_manifest(ws):
    """CARD.md beside each pair set's manifest: noise, sampler, teacher, seeds, precision and commit, as the
    manifest says them; an imported set's card says where it came from and what is not proven."""
    store = open_pairset(ws.path / dag.store_dir(EXP))
    text = (store.path / "CARD.md").read_text()
    assert text == card(store.manifest)
    teacher = store.meta["teacher"]
    for fragment in ("128 pairs (x_T, x_0, label) for seeds 0 to 127", f"written by kdm commit {code_revision()}",
                     "then the class label, uniform over 10 classes", "x_T = sigma_max * eps with sigma_max 80.0",
                     "4 steps = 7 network evaluations per pair", "precision fp32, batch 64",
                     f"{teacher['path']}, sha256 {teacher['sha256']}, label_dim 10",
                     f"| x0 | float32 | (128, 1, 8, 8) | {store.manifest['arrays']['x0']['sha256']} |"):
        assert fragment in text, fragment
    for shard in ("pairs/shard-0", "pairs/shard-1", "eval/teacher/samples"):
        assert (ws.path / "results" / EXP / shard / "CARD.md").read_text().startswith("# Pair set card")
    imported = {**store.manifest, "meta": {**store.meta, "source": {"format": "get", "path": "/data/get/pairs",
                                                                     "files": 3, "seeds": "row index"}}}
    assert "## Imported\n\nFrom a get pair set at /data/get/pairs; what the import read and assumed: files 3; " \
           "seeds row index." in card(imported)


def test_the_rederive_stage_checks_every_build_of_the_store(ws, tmp_path):
    """params `rederive`: the pipeline's own stage (both tools) re-samples the store's seeds after it is built and
    reports the largest differences; on a store that differs from its teacher it fails naming the seed, and
    writes no report."""
    report = json.loads((ws.path / REPORT).read_text())
    assert report["rederived"] == 8 and report["pairs"] == 128
    assert report["largest_difference"] == {"xT": 0.0, "labels": 0.0, "x0": 0.0}
    assert yaml.safe_load((ws.path / "dvc.yaml").read_text())["stages"][f"{EXP}-rederive"]["cmd"] == \
        f"python -m kdm rederive {EXP}"
    (tmp_path / "w").mkdir()
    copy = Workspace(tmp_path / "w", tiny_digits(EXP))
    shutil.copytree(ws.path / "results", copy.path / "results")
    rows = open_pairset(copy.path / dag.store_dir(EXP))["seeds"]
    chosen = np.sort(np.random.default_rng(0).choice(len(rows), size=8, replace=False))      # the stage's draw
    forged_store = forged(ws, tmp_path, lambda a, m: a["x0"].__setitem__(chosen[2], a["x0"][chosen[2]] * 1.001))
    shutil.rmtree(copy.path / dag.store_dir(EXP))
    shutil.copytree(forged_store.path, copy.path / dag.store_dir(EXP))
    (copy.path / REPORT).unlink()
    r = copy.run(sys.executable, "-m", "kdm", "rederive", EXP, check=False)
    log = (copy.path / dag.rederive(EXP).log).read_text()
    assert r.returncode == 1 and f"1 seeds beyond 0: {rows[chosen[2]]}" in log, log[-2000:]
    assert not (copy.path / REPORT).exists()
