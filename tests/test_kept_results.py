"""Nothing lost on a failed start: on a workspace holding complete results, bad params or a missing file named
by params make `snakemake` and `dvc repro` exit non-zero naming the key, and every file under results/ stays
byte-identical, whether DVC has adopted the results (`dvc commit -f`) or not. DVC removes a stage's outputs
before running its command, so params are checked by a stage every other one depends on (kdm/dag.py, check)."""
import copy
import hashlib
import shutil

import pytest
import yaml

from conftest import both_kinds
from workspace import Workspace, set_key

pytestmark = pytest.mark.e2e


def to_missing_inception(p):
    """digits-cond evaluated with Inception (not its classifier), whose weights file is not there."""
    del p["digits-cond"]["classifier"]
    evaluate = p["digits-cond"]["evaluate"]
    for key in ("kid_subset", "prc_neighborhood"):
        del evaluate[key]
    evaluate["extractor"] = {"kind": "inception-v3-compat", "weights": "weights/inception.pth"}


# (id, mutation, the key the message must name, the DVC stage that reads it); a bad leaf key for each stage
# kind, and two missing files
CASES = [
    ("teacher", lambda p: set_key(p, "checkerboard.teacher.lr", 3.0), "checkerboard.teacher.lr", "checkerboard-teacher"),
    ("classifier", lambda p: set_key(p, "digits-cond.classifier.holdout", 1.0), "digits-cond.classifier.holdout", "digits-cond-classifier"),
    ("pairs", lambda p: set_key(p, "checkerboard.pairs.batch", 0), "checkerboard.pairs.batch", "checkerboard-pairs-1"),
    ("store", lambda p: set_key(p, "checkerboard.pairs.seed_start", -1), "checkerboard.pairs.seed_start", "checkerboard-store"),
    ("train-kdm", lambda p: set_key(p, "checkerboard.kdm.iterations", -5), "checkerboard.kdm.iterations", "checkerboard-train-kdm-s0"),
    ("train-layers", lambda p: set_key(p, "checkerboard.kdm.net.layers", "five"), "checkerboard.kdm.net.layers", "checkerboard-train-kdm-s0"),
    ("train-kd-images", lambda p: set_key(p, "digits-cond.kd.grad_clip", -1), "digits-cond.kd.grad_clip", "digits-cond-train-kd-s0"),
    ("evaluate", lambda p: set_key(p, "digits-cond.evaluate.kid_subset", 1), "digits-cond.evaluate.kid_subset", "digits-cond-evaluate-kdm-s0"),
    ("table", lambda p: set_key(p, "experiments", ["checkerboard", "digits-cond", "checkerboard"]), "experiments", "table"),
    ("missing-teacher-pickle", lambda p: set_key(p, "digits-cond.teacher", {
        "source": "edm-pickle", "path": "teachers/edm-digits.pkl", "edm_source": ".", "trust_unpinned": True}),
     "digits-cond.teacher.path", "digits-cond-teacher"),
    ("missing-inception-weights", to_missing_inception, "digits-cond.evaluate.extractor.weights", "digits-cond-evaluate-teacher"),
]


def digests(ws) -> dict[str, str]:
    return {str(p.relative_to(ws.path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ws.path / "results").rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def complete(tmp_path_factory):
    """Two copies of one complete tiny workspace built by Snakemake: as built, and adopted by DVC."""
    built = Workspace(tmp_path_factory.mktemp("built"), both_kinds())
    built.snakemake()
    adopted = tmp_path_factory.mktemp("adopted")
    shutil.copytree(built.path, adopted, dirs_exist_ok=True)
    adopted = Workspace(adopted, both_kinds())
    adopted.dvc("commit", "-f")
    return {"not adopted": built, "adopted": adopted}


@pytest.mark.parametrize("mode", ["not adopted", "adopted"])
@pytest.mark.parametrize("case,mutate,key,stage", CASES, ids=[c[0] for c in CASES])
def test_a_refused_run_keeps_every_result(complete, mode, case, mutate, key, stage):
    ws = complete[mode]
    good = (ws.path / "params.yaml").read_text()
    before = digests(ws)
    bad = copy.deepcopy(yaml.safe_load(good))
    mutate(bad)
    ws.write_params(bad, dvc_yaml=False)
    try:
        # the whole DAG, and the stage that reads the key alone (with its upstream stages) as users also run it
        for tool, run in (("snakemake", lambda: ws.snakemake(check=False)),
                          ("dvc repro", lambda: ws.dvc("repro", check=False)),
                          (f"dvc repro {stage}", lambda: ws.dvc("repro", stage, check=False))):
            r = run()
            out = r.stdout + r.stderr
            assert r.returncode != 0, f"{tool} accepted {case}"
            assert key in out, f"{tool}: {key} not named in\n{out[-3000:]}"
            after = digests(ws)
            assert after == before, f"{tool} changed results: {sorted(set(before) ^ set(after)) or [k for k in before if before[k] != after[k]]}"
    finally:
        (ws.path / "params.yaml").write_text(good)


def test_valid_params_again_rerun_nothing(complete):
    """After the refused runs, with params.yaml as it was, both tools find nothing to do."""
    ws = complete["adopted"]
    before = digests(ws)
    assert "Running stage" not in ws.dvc("repro").stdout
    assert "up to date" in ws.dvc("status").stdout
    assert "Nothing to be done" in ws.snakemake().stderr
    assert digests(ws) == before


def test_dvc_refuses_a_dvc_yaml_older_than_the_params(complete):
    """A new training seed without `python -m kdm dvc-yaml`: DVC would run the old DAG; the check says so."""
    ws = complete["adopted"]
    good, before = (ws.path / "params.yaml").read_text(), digests(ws)
    params = yaml.safe_load(good)
    params["checkerboard"]["train_seeds"] = [0, 1]
    ws.write_params(params, dvc_yaml=False)
    try:
        r = ws.dvc("repro", check=False)
        assert r.returncode != 0 and "out of date with params; run `python -m kdm dvc-yaml`" in r.stderr, r.stderr
        assert digests(ws) == before
    finally:
        (ws.path / "params.yaml").write_text(good)
