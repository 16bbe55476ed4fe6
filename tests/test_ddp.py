"""Training on several processes for real: torchrun, DDP over gloo on the CPU, in a tiny workspace."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdm.models import load_model

import ddp_adversary
from conftest import ROOT, tiny_params
from workspace import Workspace

pytestmark = pytest.mark.e2e

RUN = "results/checkerboard/kdm-s0"
TORCHRUN = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "kdm", "train", "checkerboard", "kdm", "0"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The pipeline up to the kdm student, trained by Snakemake on 2 processes (long enough to be killed half-way)."""
    p = tiny_params()
    p["checkerboard"]["kdm"].update(gpus=2, iterations=400, checkpoint_every=20, log_every=50)
    ws = Workspace(tmp_path_factory.mktemp("ddp"), p)
    ws.snakemake(f"{RUN}/model.pt")
    return ws


def test_two_processes_train_once_and_rerun_is_a_no_op(ws):
    assert " ".join(TORCHRUN) in (ws.path / "dvc.yaml").read_text()
    files = sorted(p.name for p in (ws.path / RUN).iterdir())
    assert files == ["config.json", "loss.png", "model.pt", "snapshots", "spectrum.png", "train.csv"], files    # no leftovers
    model = load_model(ws.path / RUN / "model.pt", to="cpu")
    assert model(torch.zeros(3, 2)).shape == (3, 2)
    log = (ws.path / "logs/checkerboard/train-kdm-s0.log").read_text()
    last = {m[0]: m[1] for m in re.findall(r"rank (\d) INFO kdm.train: (.* step 400/400 .*)", log)}
    assert set(last) == {"0", "1"} and last["0"] == last["1"], log[-2000:]    # both log the mean over ranks
    assert "Nothing to be done" in ws.snakemake(f"{RUN}/model.pt", "-n").stdout


def _workers(ws) -> list[int]:
    """Pids of the `-m kdm train` processes (torchrun's and its workers) running in the workspace."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "-m kdm train checkerboard kdm 0" in cmd and os.readlink(proc / "cwd") == str(ws.path):
                pids.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return pids


def test_killed_run_resumes_bitwise_on_every_rank(ws):
    ref = {name: (ws.path / RUN / name).read_bytes() for name in ("model.pt", "train.csv")}
    for name in ref:
        (ws.path / RUN / name).unlink()
    checkpoint = ws.path / RUN / "checkpoint.pt"
    proc = subprocess.Popen(TORCHRUN, cwd=ws.path, env=ws.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.is_file():
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)                  # torchrun and both workers
        proc.wait(timeout=60)
    finally:
        for pid in _workers(ws):
            os.kill(pid, signal.SIGKILL)
    assert not (ws.path / RUN / "model.pt").exists()

    r = subprocess.run(TORCHRUN, cwd=ws.path, env=ws.env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    resumed = re.findall(r"resumed from checkpoint .* at iteration (\d+)", r.stderr)
    assert len(resumed) == 2 and len(set(resumed)) == 1 and int(resumed[0]) > 0, r.stderr[-4000:]   # both ranks
    for name, data in ref.items():
        assert (ws.path / RUN / name).read_bytes() == data, name
    assert not checkpoint.exists()


def test_batch_must_divide_over_the_processes(ws, tmp_path):
    """Launched by hand on 3 processes, a global batch of 64 cannot be split evenly: a clear error, no outputs."""
    r = subprocess.run([*TORCHRUN[:3], "3", *TORCHRUN[4:]], cwd=ws.path, env=ws.env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0
    assert "kdm.batch: 64 is not divisible by the 3 training processes" in r.stderr, r.stderr[-3000:]


def test_ranks_keep_the_same_model_and_discriminator(tmp_path):
    """DDP for the student, averaged gradients for the adversary's discriminator, under bf16 and channels-last."""
    r = subprocess.run([*TORCHRUN[:4], str(ROOT / "tests/ddp_adversary.py"), str(tmp_path)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    a, b = (torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in (0, 1))
    assert a["rows"] == b["rows"]
    for part in ("model", "ema", "disc"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    start = ddp_adversary.student().state_dict()
    assert not all(torch.equal(v, a["model"][k]) for k, v in start.items())     # it did train
