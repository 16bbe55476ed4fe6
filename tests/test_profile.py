"""`python -m kdm profile` and the prepared GPU script, run on the CPU at small sizes: random weights, synthetic
pairs, nothing downloaded."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def profile(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "kdm", "--params", str(ROOT / "params.yaml"), "profile", *args,
                           "--out", str(tmp_path)], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)


def test_profile_of_a_student_and_its_teacher_on_the_cpu(tmp_path):
    r = profile(tmp_path, "digits", "--scale", "small", "--steps", "6", "--variants", "fp32,fp32+channels_last",
                "--pairs", "fp32,bf16", "--pairs-count", "8", "--models", "kdm,teacher")
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads((tmp_path / "digits.json").read_text())
    assert got["device"].startswith("CPU") and got["peak_tflops"] is None and "unknown peak" in got["peak"]
    assert "bf16 native" in got["device"] or "bf16 emulated" in got["device"]
    assert "TorchFunctionMode" in got["sync_method"]
    train = [row for row in got["rows"] if row["model"] == "kdm"]
    assert [row["variant"] for row in train] == ["fp32", "fp32+channels_last"]
    for row in train:
        assert row["batch"] == 8 and row["it_per_s"] > 0 and row["samples_per_s"] == pytest.approx(8 * row["it_per_s"])
        assert row["flops_per_step"] > 1e6 and row["tflops_per_s"] > 0 and row["share_of_peak"] is None
        assert row["aten_ops_per_step"] > 100 and row["kernels_per_step"] is None and row["peak_memory_mb"] > 0
        # an ordinary step reads nothing back but the CPU-only row indices of the memory-mapped store
        assert set(row["syncs_per_step"]) <= {"numpy"}, row["syncs_per_step"]
        # where the time goes: every phase measured, the adversary's own part of KDM's step among them
        phases = row["phases_ms_per_step"]
        assert list(phases) == ["data", "forward", "adversary", "backward", "optimizer", "ema", "other"]
        assert all(phases[k] > 0 for k in ("data", "forward", "adversary", "backward", "optimizer", "ema")), phases
    (teacher,) = [row for row in got["rows"] if row["model"] == "teacher" and row["variant"] == "fp32" and
                  "it_per_s" in row]
    assert teacher["it_per_s"] > 0 and teacher["batch"] == 8 and teacher["phases_ms_per_step"]["adversary"] == 0
    assert teacher["phases_ms_per_step"]["forward"] > 0 and teacher["flops_per_step"] > 1e6
    pairs = [row for row in got["rows"] if "pairs_per_s" in row]
    assert [row["variant"] for row in pairs] == ["fp32", "bf16"] and all(row["pairs_per_s"] > 0 for row in pairs)
    md = (tmp_path / "digits.md").read_text()
    assert "| kdm | fp32 | 8 |" in md and "| teacher | fp32 | 8 |" in md and "Teacher pairs" in md
    assert "unknown peak" in md and "Where a step's time goes" in md


def test_profile_of_a_paper_preset_shrunk(tmp_path):
    """cifar10-uncond (three DDPM++ UNets, LPIPS, patch adversary, an EDM pickle's teacher) on a CPU: 16 channels."""
    r = profile(tmp_path, "cifar10-uncond", "--scale", "small", "--batch", "2", "--steps", "1", "--pairs", "none")
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = json.loads((tmp_path / "cifar10-uncond.json").read_text())["rows"]
    assert row["batch"] == 2 and row["flops_per_step"] > 1e9 and row["it_per_s"] > 0


def test_bad_profile_arguments_are_named(tmp_path):
    r = profile(tmp_path, "digits", "--variants", "fp16")
    assert r.returncode == 1 and "variant 'fp16': starts with fp32 or bf16" in r.stderr
    r = profile(tmp_path, "digits", "--variants", "bf16+turbo")
    assert r.returncode == 1 and "unknown option 'turbo'" in r.stderr
    r = profile(tmp_path, "digits", "--models", "kdm,student")
    assert r.returncode == 2 and "profile: models are kdm, kd, teacher (got ['student'])" in r.stderr
    r = profile(tmp_path, "nosuch")
    assert r.returncode == 2 and "experiment 'nosuch'" in r.stderr
    assert not list(tmp_path.glob("*.json"))


def test_gpu_script_runs_every_measurement(tmp_path):
    """workflow/benchmark/gpu-profile.sh at CPU sizes: each measurement its own process and folder, one table."""
    r = subprocess.run(["bash", str(ROOT / "workflow/benchmark/gpu-profile.sh"), "digits", "--scale", "small",
                        "--batch", "2", "--steps", "3", "--repeats", "1", "--pairs-batch", "2"], cwd=ROOT,
                       capture_output=True, text=True, timeout=900, env={**ENV, "KDM_PROFILE_OUT": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    for name, variants in [("fp32", ["fp32"]), ("bf16", ["bf16"]), ("bf16-channels-last", ["bf16+channels_last"]),
                           ("bf16-compile-blocks", ["bf16+compile=blocks"]), ("pairs", ["fp32", "bf16"])]:
        rows = json.loads((tmp_path / name / "digits.json").read_text())["rows"]
        assert [row["variant"] for row in rows] == variants
    assert (tmp_path / "digits.md").read_text().count("# Profile: digits") == 5


def test_timing_noise_larger_than_the_steps_is_an_error_not_a_negative_rate():
    from kdm.profiling import seconds_per_step
    assert seconds_per_step(lambda n: 1.0 + 0.5 * n, 4) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="raise --steps"):
        seconds_per_step(lambda n: 3.0 - 0.1 * n, 4)       # the longer run measured faster: noise
