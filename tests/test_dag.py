"""One DAG, two drivers: the Snakefile and dvc.yaml must describe the same jobs."""
import re
import subprocess
import sys

import pytest
import yaml

from kdm import config, dag

from conftest import ROOT
from workspace import Workspace, dvc_jobs, snakemake_jobs


def test_committed_dvc_yaml_is_current():
    out = subprocess.run([sys.executable, "-m", "kdm", "dvc-yaml", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("which", ["shipped", "tiny", "tiny-2-gpus"])
def test_snakemake_and_dvc_run_the_same_jobs(tmp_path, params, which):
    if which == "shipped":
        params = config.load(ROOT / "params.yaml")
    if which == "tiny-2-gpus":      # training stages start under torchrun
        for section in ("teacher", "kdm"):
            params["checkerboard"][section]["gpus"] = 2
    ws = Workspace(tmp_path, params)
    benchmark = ["benchmark"] if "benchmark" in params else []      # shipped: the benchmark too, from its own file
    dry_run = ws.snakemake("--forceall", "-n", "-p", "all", *benchmark).stdout
    smk = snakemake_jobs(dry_run)
    dvc = set()
    for path in ["dvc.yaml"] + [dag.BENCHMARK_DVC] * bool(benchmark):
        dvc |= dvc_jobs(yaml.safe_load((tmp_path / path).read_text()))
    assert smk == dvc, f"only Snakemake: {smk - dvc}\nonly DVC: {dvc - smk}"
    assert len(dvc) == len(dag.stages(params)) + len(benchmark)
    launcher = "torchrun --standalone --nproc_per_node 2 -m kdm "
    torchrun = {cmd.removeprefix(launcher) for cmd, _, _ in dvc if cmd.startswith(launcher)}
    assert torchrun == ({"teacher checkerboard", "train checkerboard kdm 0"} if which == "tiny-2-gpus" else set())
    # every GPU job asks for its GPUs (SLURM: sbatch --gpus), a torchrun job for all of them
    gpus = {}
    for job in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run):
        cmd, gpu = re.search(r"^Shell command: (.+)$", job, re.M), re.search(r"^\s+resources: .*\bgpu=(\d+)", job, re.M)
        if cmd and gpu:
            gpus[cmd.group(1).strip()] = int(gpu.group(1))
    assert {cmd.split(" kdm ")[1].split()[0] for cmd in gpus} == {"teacher", "pairs", "rederive", "train"}
    assert all(n == (2 if cmd.startswith(launcher) else 1) for cmd, n in gpus.items()), gpus


def test_each_stage_declares_only_its_own_sections(params):
    by_name = {s.name: s for s in dag.stages(params)}
    assert by_name["checkerboard-train-kdm-s0"].params == ("checkerboard.kdm", "checkerboard.snapshots.every")
    assert by_name["checkerboard-train-kd-s0"].params == ("checkerboard.kd", "checkerboard.snapshots.every")
    assert "checkerboard.kdm" not in by_name["checkerboard-evaluate-kdm-s0"].params
    for s in dag.stages(params):
        for key in s.params:
            config.section(params, key)          # every declared key exists


def test_stage_params_are_exactly_the_declared_sections(params):
    stage = dag.train("checkerboard", "kdm", 0)
    assert dag.stage_params(params, stage) == {"kdm": params["checkerboard"]["kdm"], "every": 0}   # snapshots.every


def test_the_cli_runs_only_stages_the_params_have(tmp_path, params, capsys, monkeypatch):
    """A command line the DAG has no stage for exits 2 with a message naming what is wrong, before any work."""
    from kdm.__main__ import main
    params["benchmark"] = config.load(ROOT / "params.yaml")["benchmark"]
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    cases = {("evaluate", "checkerboard", "kdm"): "a training seed is required",
             ("evaluate", "checkerboard", "teacher", "0"): "the teacher has no training seed, got 0",
             ("train", "checkerboard", "kdm", "7"): "checkerboard-train-kdm-s7: ",
             ("pairs", "checkerboard", "9"): "pairs.shards 2",
             ("classifier", "checkerboard"): "data.kind 'checkerboard'",
             ("benchmark",): "lists no image experiment"}
    for argv, fragment in cases.items():
        assert main(["--params", str(path), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert fragment in err, (argv, err)
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]        # no log, no results
