"""Fault injection: kill -9 the pairs and train stages at random points, re-run the DAG, and check that
it completes with the bytes of an uninterrupted run, having resumed rather than restarted."""
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, tiny_params
from workspace import Workspace

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")]

SEEDS = (0, 1, 2)


def fault_params():
    """Tiny, but with stages long enough (1-3 s) to be killed half-way."""
    p = tiny_params()
    e = p["checkerboard"]
    e["teacher"]["net"].update(hidden=256, layers=4)
    e["sampler"]["steps"] = 18
    e["pairs"].update(count=4096, shards=2, batch=128)       # 16 batches of 35 NFE per shard
    e["kdm"].update(iterations=400, checkpoint_every=20, batch=128, net={"kind": "mlp", "hidden": 128, "layers": 4})
    return p


def digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("ref"), fault_params())
    ws.snakemake(ws.stage_target("checkerboard-train-kdm-s0"))
    return ws


def stage_pid(ws, args: str):
    """The pid of the running `python -m kdm <args>` whose working directory is the workspace."""
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if f"-m kdm {args}" in cmd and os.readlink(proc / "cwd") == str(ws.path):
                return int(proc.name)
        except (OSError, ValueError):
            continue
    return None


def kill_when(ws, target: str, args: str, ready, timeout=120):
    """Run snakemake for `target`, kill -9 the stage `args` once ready() holds, wait for snakemake."""
    smk = subprocess.Popen([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "1", target],
                           cwd=ws.path, env=ws.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert smk.poll() is None, f"snakemake ended before the kill point: {smk.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "kill point never reached"
            time.sleep(0.005)
        pid = stage_pid(ws, args)
        assert pid, f"no running `kdm {args}`"
        os.kill(pid, signal.SIGKILL)
        assert smk.wait(timeout=60) != 0, "snakemake did not notice the killed job"
    finally:
        if smk.poll() is None:
            smk.kill()


def copy_of(reference, tmp_path, drop):
    ws_path = tmp_path / "ws"
    shutil.copytree(reference.path, ws_path, symlinks=True)
    ws = Workspace.__new__(Workspace)
    ws.path, ws.env = ws_path, reference.env
    for rel in drop:
        target = ws_path / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return ws


@pytest.mark.parametrize("seed", SEEDS)
def test_killed_pairs_stage_resumes_byte_identical(reference, tmp_path, seed):
    ws = copy_of(reference, tmp_path, ["results/checkerboard/pairs", "results/checkerboard/store"])
    done_batches = random.Random(seed).randint(1, 13)
    partial = ws.path / "results/checkerboard/pairs/.shard-0.partial"
    kill_when(ws, "results/checkerboard/store", "pairs checkerboard 0",
              lambda: len(list(partial.glob("[0-9]*.npy"))) >= done_batches)
    assert not (ws.path / "results/checkerboard/pairs/shard-0").exists(), "a killed shard looks complete"

    ws.snakemake("results/checkerboard/store")
    log = (ws.path / "logs/checkerboard/pairs-0.log").read_text()
    resumed = re.search(r"resumed; (\d+) of 16 batches were already done", log)
    assert resumed and int(resumed.group(1)) >= done_batches, log[-2000:]
    for rel in ("pairs/shard-0", "pairs/shard-1", "store"):
        assert digest(ws.path / "results/checkerboard" / rel) == digest(reference.path / "results/checkerboard" / rel), rel
    assert not partial.exists()


@pytest.mark.parametrize("seed", SEEDS)
def test_killed_training_resumes_from_checkpoint_bitwise(reference, tmp_path, seed):
    run = "results/checkerboard/kdm-s0"
    ws = copy_of(reference, tmp_path, [run])
    checkpoint = ws.path / run / "checkpoint.pt"
    delay = random.Random(seed).uniform(0.0, 0.8)
    seen = {}

    def ready():
        if checkpoint.is_file() and "t" not in seen:
            seen["t"] = time.monotonic()
        return "t" in seen and time.monotonic() - seen["t"] >= delay

    kill_when(ws, f"{run}/model.pt", "train checkerboard kdm 0", ready)
    assert not (ws.path / run / "model.pt").exists()

    ws.snakemake(f"{run}/model.pt")
    log = (ws.path / "logs/checkerboard/train-kdm-s0.log").read_text()
    resumed = re.search(r"resumed from checkpoint .* at iteration (\d+)", log)
    assert resumed and int(resumed.group(1)) > 0, log[-2000:]
    for rel in ("model.pt", "train.csv"):
        assert digest(ws.path / run / rel) == digest(reference.path / run / rel), rel
    assert not checkpoint.exists(), "the checkpoint outlived a finished run"


def test_killed_snakemake_unlocks_and_reruns_the_incomplete_job(reference, tmp_path):
    """The README's recovery after a crash of Snakemake itself (kill -9 of it and its job, as when a terminal or a
    node goes): its lock stops the next run until `snakemake --unlock`; the run after it re-makes the output the
    killed job left incomplete (profiles/default sets rerun-incomplete), with the bytes of an uninterrupted run."""
    run = "results/checkerboard/kdm-s0"
    ws = copy_of(reference, tmp_path, [run])
    smk = subprocess.Popen([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "1",
                            f"{run}/model.pt"], cwd=ws.path, env=ws.env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:       # the job's first output is there, its last (model.pt, after two figures) not yet: kill then
        deadline = time.monotonic() + 120
        while not (ws.path / run / "snapshots").is_dir():
            assert smk.poll() is None and time.monotonic() < deadline, "the training never finished"
            time.sleep(0.002)
    finally:
        os.killpg(smk.pid, signal.SIGKILL)
        smk.wait(timeout=60)
    locked = ws.snakemake(f"{run}/model.pt", check=False)
    assert locked.returncode and "--unlock" in locked.stderr, locked.stderr[-2000:]
    ws.snakemake("--unlock")
    assert not (ws.path / run / "model.pt").exists(), "killed too late: the job had finished"
    r = ws.snakemake(f"{run}/model.pt")
    assert "reason: Forced execution" in r.stderr, r.stderr[-2000:]       # the incomplete output, re-made
    for rel in ("model.pt", "train.csv"):
        assert digest(ws.path / run / rel) == digest(reference.path / run / rel), rel
