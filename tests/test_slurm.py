"""The pipeline through SLURM for real: tiny params, profiles/slurm, every job an sbatch job on
the cluster that `sinfo` answers for (in CI the one-node cluster of .ci/slurm-up). Skipped where there is
no cluster, unless KDM_REQUIRE_SLURM=1 (set by .ci/run) makes that a failure."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, tiny_params
from workspace import Workspace

pytestmark = pytest.mark.e2e

GPU_RULES = {"teacher", "pairs", "rederive", "train_kdm", "train_kd"}   # rules that ask for a GPU (gpus: 1 default)
RULES = GPU_RULES | {"store", "evaluate_teacher", "evaluate_student", "table"}


def sinfo(*fields) -> list[str]:
    """Fields of the default partition's nodes that are up, from sinfo; raises when SLURM does not answer."""
    r = subprocess.run(["sinfo", "-h", "-t", "idle,mix,alloc", "-o", "|".join(fields)],
                       capture_output=True, text=True, timeout=30)
    if r.returncode:
        raise RuntimeError(f"sinfo exited {r.returncode}: {r.stderr.strip()}")
    return [line for line in r.stdout.splitlines() if "*" in line.split("|")[0]]


@pytest.fixture(scope="module")
def node():
    """The default partition's first node that is up: (CPUs, memory in MB)."""
    try:
        if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
            raise RuntimeError('snakemake-executor-plugin-slurm is not installed (pip install -e ".[slurm]")')
        if not shutil.which("sinfo"):
            raise RuntimeError("sinfo is not installed")
        nodes = sinfo("%P", "%c", "%m")
        if not nodes:
            raise RuntimeError("no node of the default partition is up")
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        if os.environ.get("KDM_REQUIRE_SLURM") == "1":
            pytest.fail(f"KDM_REQUIRE_SLURM=1 but the pipeline cannot run on SLURM here: {e}")
        pytest.skip(f"cannot run on SLURM here ({e}); .ci/slurm-up starts a one-node cluster (Debian, as root)")
    _, cpus, mem = nodes[0].split("|")
    return int(cpus), int(mem.rstrip("+"))


def slurm_job(jobid: str) -> dict:
    out = subprocess.run(["scontrol", "show", "job", "-o", jobid], capture_output=True, text=True,
                         check=True).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def test_pipeline_runs_through_slurm(tmp_path, node):
    cpus, mem_mb = node
    ws = Workspace(tmp_path, tiny_params())
    r = ws.run(sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
               "--profile", str(ROOT / "profiles/slurm"),
               "--cores", str(cpus),                          # the profile's node size, here this node's
               # tiny jobs; the profile's 8 GB each may be more than a CI machine has
               "--default-resources", "runtime=30", f"mem_mb={min(2000, mem_mb // 2)}",
               "--slurm-status-command", "squeue",            # no accounting, so no sacct; squeue sees
                                                              # finished jobs for MinJobAge (300 s)
               "--slurm-init-seconds-before-status-checks", "2",   # tiny jobs: poll soon
               timeout=900)
    log = r.stdout + r.stderr

    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.", log)
    assert len(submitted) == 11, log[-4000:]           # every job of the tiny DAG but the local `all` and `check`
    rules = set()
    for jobid, slurm_log in submitted:
        job = slurm_job(jobid)
        rule = job["Comment"].removeprefix("rule_").split("_wildcards_")[0]
        rules.add(rule)
        assert job["JobState"] == "COMPLETED", (rule, job)
        assert ("gres:gpu:1" in job.get("TresPerJob", "")) == (rule in GPU_RULES), (rule, job)
        assert os.path.getsize(slurm_log) > 0, f"{rule}: SLURM log {slurm_log} is empty"
    assert rules == RULES

    table = (tmp_path / "results/table.csv").read_text().splitlines()
    assert table[0].startswith("experiment,model,nfe,ms_per_sample,speedup")
    assert [row.split(",")[1] for row in table[1:] if ",ours@" in row] == ["teacher", "kdm", "kd"]
