"""The paper-scale presets of params.yaml: their DAG under both tools (with stand-ins for their files), and the
messages both tools and the stages give when a file is missing."""
import re
import sys

import pytest
import yaml

from kdm import config, dag

from conftest import shipped
from workspace import Workspace, dvc_jobs, set_key, snakemake_jobs

PRESETS = ["cifar10-uncond", "cifar10-cond", "ffhq64", "afhqv2-64"]


def preset(name: str, **paths) -> dict:
    """Params that run the preset `name` alone (its sections unshared from the other presets'), with `paths`
    ('section.key': value) replaced."""
    params = {"experiments": [name], name: shipped()[name]}
    for dotted, value in paths.items():
        set_key(params, f"{name}.{dotted}", value)
    return params


def stand_ins(params: dict, root) -> dict:
    """`params` with every file they name replaced by an empty stand-in under `root` (enough to plan a run)."""
    for key, _, fmt in config.named_files(params):
        path = root / key
        path.mkdir() if fmt == "local-dir" else path.touch()
        set_key(params, key, str(path))
    return params


@pytest.mark.parametrize("name", PRESETS)
def test_preset_dry_runs_list_every_stage_under_both_tools(tmp_path, name):
    params = stand_ins(preset(name), tmp_path)
    ws = Workspace(tmp_path, params)
    smk = snakemake_jobs(ws.snakemake("--forceall", "-n", "-p").stdout)
    assert smk == dvc_jobs(yaml.safe_load((tmp_path / "dvc.yaml").read_text()))
    commands = sorted(cmd.removeprefix("python -m kdm ") for cmd, _, _ in smk)
    shards = params[name]["pairs"]["shards"]
    assert commands == sorted(["check", f"reference {name}", f"teacher {name}", f"store {name}", "table",
                               f"train {name} kdm 0", f"train {name} kd 0", f"evaluate {name} teacher",
                               f"evaluate {name} kdm 0", f"evaluate {name} kd 0", f"curve {name} kdm 0",
                               f"curve {name} kd 0"]
                              + [f"pairs {name} {i}" for i in range(shards)])
    (evaluate_kdm,) = [inputs for cmd, inputs, _ in smk if cmd.endswith(f"evaluate {name} kdm 0")]
    assert dag.reference(name).outs.stats in evaluate_kdm


def kdm_cli(ws, *args):
    r = ws.run(sys.executable, "-m", "kdm", *args, check=False)
    return r.returncode, r.stdout + r.stderr


def test_missing_teacher_and_data_are_named_when_their_stage_runs(tmp_path):
    ws = Workspace(tmp_path, preset("cifar10-uncond", **{"teacher.path": str(tmp_path / "edm.pkl"),
                                                         "data.path": str(tmp_path / "cifar10-32x32.zip")}))
    rc, out = kdm_cli(ws, "teacher", "cifar10-uncond")
    assert rc == 1 and re.search(r"teacher.path: .*edm.pkl does not exist; expected an EDM network pickle", out), out
    rc, out = kdm_cli(ws, "reference", "cifar10-uncond")
    assert rc == 1 and re.search(r"data.path: .*cifar10-32x32.zip does not exist; expected a folder or .zip", out), out
    assert not (tmp_path / "results").exists() or not any(p.is_file() for p in (tmp_path / "results").rglob("*"))
    rc, out = kdm_cli(ws, "classifier", "cifar10-uncond")
    assert rc == 2 and "evaluate.extractor.kind 'inception-v3-compat'" in out


def test_both_tools_name_every_missing_file_of_a_preset_before_running(tmp_path):
    ws = Workspace(tmp_path, preset("cifar10-cond"))    # the shipped paths: none of them exist here
    keys = [key for key, _, _ in config.named_files(preset("cifar10-cond"))]
    assert {k.split(".", 1)[1] for k in keys} == {"data.path", "teacher.path", "teacher.edm_source", "kdm.rec_loss.weights",
                                                  "kd.rec_loss.weights", "evaluate.extractor.weights"}
    for r in (ws.snakemake("-n", check=False), ws.run(sys.executable, "-m", "kdm", "check", check=False)):
        out = r.stdout + r.stderr
        assert r.returncode != 0 and all(f"{key}: " in out and "does not exist" in out for key in keys), out
    assert not (tmp_path / "results").exists()


def test_paper_scale_sweeps_are_prepared_and_planned_with_a_gpu_per_training(tmp_path):
    """The shipped cifar10 sweeps run no job while their presets are not in experiments:, and with them listed
    `snakemake -n sweeps` plans each point's training with a GPU (DVC: the same jobs); the point equal to the
    preset's own student (64 channels, all 1M pairs) is that student."""
    params = shipped()
    assert {"cifar10-size", "cifar10-pairs"} <= set(params["sweeps"])
    assert not {"cifar10-size", "cifar10-pairs"} & set(config.active_sweeps(params))
    sweeps = {name: s for name, s in params["sweeps"].items() if s["experiment"].startswith("cifar10")}
    params = stand_ins({"experiments": ["cifar10-uncond", "cifar10-cond"], "sweeps": sweeps,
                        **{k: params[k] for k in ("cifar10-uncond", "cifar10-cond")}}, tmp_path)
    ws = Workspace(tmp_path, params)
    out = ws.snakemake("-n", "-p", "sweeps").stdout
    trainings = re.findall(r"rule (sweep_train_kdm?):.*?resources: ([^\n]+).*?Shell command: ([^\n]+)", out, re.S)
    commands = sorted(cmd.removeprefix("python -m kdm train ") for _, _, cmd in trainings)
    assert commands == sorted(["cifar10-uncond kdm 0 --point cifar10-size/model_channels=48",
                               "cifar10-uncond kdm 0 --point cifar10-size/model_channels=96"]
                              + [f"cifar10-cond {m} 0 --point cifar10-pairs/pairs_used={n}"
                                 for m in ("kdm", "kd") for n in (125000, 250000, 500000)])
    assert all("gpu=1" in resources for _, resources, _ in trainings), trainings
    swept = {cmd for cmd, _, _ in snakemake_jobs(ws.snakemake("-n", "-p", "sweeps").stdout) if "--point" in cmd}
    dvc = {cmd for cmd, _, _ in dvc_jobs(yaml.safe_load((tmp_path / dag.SWEEPS_DVC).read_text()))}
    assert swept == {cmd for cmd in dvc if "--point" in cmd} and len(swept) == 2 * len(commands)
