"""Sweeps as data (params.yaml `sweeps:`): both tools expand the same jobs, a point equal to the experiment's own
student is that student, each sweep writes its table and figure, and a changed or added value re-runs only its
point's jobs and its sweep's table - for real, on the tiny checkerboard."""
import json
import re

import pandas as pd
import pytest
import yaml

from kdm import config, dag
from kdm.io import write_json
from kdm.stages import sweep

from conftest import ROOT, shipped, tiny_params
from workspace import Workspace, dvc_jobs, dvc_stages, snakemake_jobs

SWEEPS = {"budget": {"experiment": "checkerboard", "students": ["kdm", "kd"], "axes": {"pairs_used": [128, 512]}},
          "latent": {"experiment": "checkerboard", "axes": {"kdm.latent_dim": [8, 16]}, "seeds": [0, 1]}}


def swept_params() -> dict:
    params = tiny_params()          # 512 pairs; KDM's latent_dim 16, training seed 0
    params["sweeps"] = json.loads(json.dumps(SWEEPS))
    return params


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("sweeps"), swept_params())
    ws.snakemake("all", "sweeps")
    return ws


def test_points_are_named_by_their_values_and_equal_points_are_the_experiments_own():
    params = swept_params()
    assert [p.name for p in dag.points(params, "budget")] == ["pairs_used=128", "pairs_used=512"]
    runs = {(p.name, m, s): run for p, m, s, run in dag.sweep_runs(params, "latent")}
    assert runs == {("latent_dim=8", "kdm", 0): "sweeps/latent/latent_dim=8/kdm-s0",
                    ("latent_dim=8", "kdm", 1): "sweeps/latent/latent_dim=8/kdm-s1",
                    ("latent_dim=16", "kdm", 0): "kdm-s0",                    # the experiment trains seed 0 only
                    ("latent_dim=16", "kdm", 1): "sweeps/latent/latent_dim=16/kdm-s1"}
    params["sweeps"]["mixed"] = {"experiment": "checkerboard", "mode": "zip",
                                 "axes": {"kdm.rec_loss.kind": ["l2", "pseudo_huber"], "kdm.loss_weights.push": [0, 1],
                                          "kdm.operator.kind": ["dense", "decomposed"]}}
    assert [p.name for p in dag.points(params, "mixed")] == [
        "rec_loss.kind=l2,push=0,operator.kind=dense", "rec_loss.kind=pseudo_huber,push=1,operator.kind=decomposed"]
    # the first point is the experiment's KDM (l2, no push, dense); the second trains with its settings
    assert [run for *_, run in dag.sweep_runs(params, "mixed")][0] == "kdm-s0"
    train, evaluate, table = dag.sweep_stages(params, "mixed")
    assert all(re.fullmatch(r"[\w-]+", s.name) for s in (train, evaluate, table))      # DVC's stage names
    kdm = dag.stage_params(params, train)["kdm"]
    assert (kdm["rec_loss"]["kind"], kdm["loss_weights"]["push"], kdm["operator"]["kind"]) == \
        ("pseudo_huber", 1, "decomposed")


@pytest.mark.parametrize("change, message", [
    (lambda s: s["budget"].update(experiment="nope"), "sweeps.budget.experiment: 'nope' is not an experiment"),
    (lambda s: s["budget"].update(experiment="sweeps"), "sweeps.budget.experiment: 'sweeps' is not an experiment"),
    (lambda s: s["budget"].update(x="nope"), "sweeps.budget.x: 'nope' is neither an axis"),
    (lambda s: s["latent"]["axes"].update({"kd.lr": [0.1]}), "sweeps.latent.axes.kd.lr: the sweep trains ['kdm']"),
    (lambda s: s["latent"].update(mode="zip", axes={"latent_dim": [8], "lr": [0.1, 0.2]}), "lists of one length"),
    (lambda s: s["latent"]["axes"].update({"kdm.rec_loss.kind": ["l3"]}),
     "sweeps.latent point latent_dim=8,rec_loss.kind=l3: checkerboard.kdm.rec_loss.kind"),
    (lambda s: s["budget"]["axes"].update(pairs_used=[513]), "checkerboard.kdm.pairs_used: 513 exceeds"),
    (lambda s: s["budget"]["axes"].update({"net.nope": [1]}), "checkerboard.kdm.net"),
])
def test_bad_sweeps_are_refused_naming_the_key(change, message):
    params = swept_params()
    change(params["sweeps"])
    with pytest.raises(config.ParamsError, match=re.escape(message)):
        config.validate(params)


def test_the_cli_runs_only_points_the_sweep_has(tmp_path, capsys, monkeypatch):
    from kdm.__main__ import main
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(swept_params()))
    point = ("--point", "latent/latent_dim=8")
    for argv, fragment in {("train", "checkerboard", "kdm", "0", "--point", "latent/latent_dim=99"):
                           "its points: latent_dim=8, latent_dim=16",
                           ("train", "checkerboard", "kdm", "0", "--point", "latent/latent_dim=16"): "is that student",
                           ("sweep", "nope"): "no such sweep",
                           ("evaluate", "checkerboard", "kd", "0", *point): "trains no such student"}.items():
        assert main(list(argv)) == 2, argv
        assert fragment in capsys.readouterr().err, argv


def test_both_tools_expand_the_same_sweep_jobs(swept):
    smk = snakemake_jobs(swept.snakemake("--forceall", "-n", "-p", "all", "sweeps").stdout)
    dvc = set()
    for path in ("dvc.yaml", dag.SWEEPS_DVC):
        dvc |= dvc_jobs(yaml.safe_load((swept.path / path).read_text()))
    assert smk == dvc, f"only Snakemake: {smk - dvc}\nonly DVC: {dvc - smk}"
    # budget: 128 pairs for kdm and kd (all 512 is the experiment's own); latent: 8 on seeds 0, 1 and 16 on seed 1
    assert len(dag.all_sweep_stages(swept_params())) == 2 * (2 + 3) + 2


def test_each_sweep_writes_its_table_and_figure(swept):
    r = swept.path / "results"
    assert not (r / "checkerboard/sweeps/budget/pairs_used=512").exists()         # not trained again
    config_128 = json.loads((r / "checkerboard/sweeps/budget/pairs_used=128/kd-s0/config.json").read_text())
    assert config_128["params"]["kd"]["pairs_used"] == 128
    budget = pd.read_csv(r / "sweeps/budget.csv")
    assert list(zip(budget["point"], budget["model"])) == [("pairs_used=128", "kdm"), ("pairs_used=128", "kd"),
                                                           ("pairs_used=512", "kdm"), ("pairs_used=512", "kd")]
    assert list(budget["pairs"]) == [128, 128, 512, 512]
    assert list(budget["teacher_nfe"]) == [128 * 11] * 2 + [512 * 11] * 2           # 6 Heun steps: 11 NFE a pair
    own = json.loads((r / "checkerboard/eval/kdm-s0/metrics.json").read_text())
    assert budget.set_index(["point", "model"]).loc[("pairs_used=512", "kdm"), "precision"] == own["precision"]
    latent = pd.read_csv(r / "sweeps/latent.csv")
    assert list(latent["seeds"]) == [2, 2] and latent["precision_std"].notna().all()
    assert "±" in (r / "sweeps/latent.md").read_text() and r"\toprule" in (r / "sweeps/latent.tex").read_text()
    summary = json.loads((r / "sweeps/budget.json").read_text())
    assert set(summary) == {"pairs_used=128", "pairs_used=512"} and set(summary["pairs_used=128"]) == {"kdm", "kd"}
    assert (r / "sweeps/budget.png").stat().st_size > 10_000


def _planned(ws) -> tuple[set, set]:
    """The commands Snakemake (`-n sweeps`) and DVC (the stages `dvc status` names, and those downstream of them)
    would run."""
    smk = {cmd for cmd, _, _ in snakemake_jobs(ws.snakemake("-n", "-p", "sweeps").stdout)}
    stages = {}
    for path in ("dvc.yaml", dag.SWEEPS_DVC):
        stages |= dvc_stages(yaml.safe_load((ws.path / path).read_text()))
    plan = {name.rsplit(":", 1)[-1] for name in json.loads(ws.dvc("status", "--json").stdout)}
    while more := {name for name, s in stages.items() if name not in plan and any(
            d == o or d.startswith(o + "/") for d in s["deps"] for p in plan for o in stages[p]["outs"])}:
        plan |= more
    return smk, {stages[name]["cmd"] for name in plan}


def test_a_changed_or_added_value_reruns_only_its_points_and_its_table(swept):
    swept.dvc("commit", "-f")
    assert _planned(swept) == (set(), set())
    shown = json.loads(swept.dvc("metrics", "show", "--json").stdout)          # DVC's metrics: each sweep's headline
    (files,) = [rev["data"] for rev in shown.values()]
    assert files["results/sweeps/latent.json"]["data"]["latent_dim=8"]["kdm"]["precision"] >= 0
    for values, new in (([4, 16], "latent_dim=4"), ([8, 16, 32], "latent_dim=32")):
        params = swept_params()
        params["sweeps"]["latent"]["axes"]["kdm.latent_dim"] = values
        swept.write_params(params)
        smk, dvc = _planned(swept)
        expected = {f"python -m kdm {step} checkerboard kdm {s} --point latent/{new}" for step in ("train", "evaluate")
                    for s in (0, 1)} | {"python -m kdm sweep latent"}
        assert smk == expected and dvc == expected | {"python -m kdm check"}, (smk, dvc)
    swept.write_params(swept_params())


def test_published_points_join_a_sweep_on_its_x(tmp_path, monkeypatch):
    """The cifar10 model-size sweep (x: params) shows the authors' KDM and GET points at their stated parameter
    counts, said not comparable (their reference file is not ours); its evaluations here are written by hand,
    as the stage reads them (the preset itself needs GPUs)."""
    params = shipped()
    params["experiments"] = ["cifar10-uncond"]
    stage = dag.sweep_table(params, "cifar10-size")
    monkeypatch.chdir(tmp_path)
    write_json(stage.deps.teacher, {"nfe": 35, "fid": 2.0, "reference": "cifar10-train"})
    for (_, values, _, _, path), fid in zip(stage.args["runs"], (12.0, 6.0, 5.0)):
        write_json(path, {"model": "kdm", "fid": fid, "params": 1e4 * values[0][1] ** 2, "train_minutes": 1.0})
    sweep.run(stage, dag.stage_params(params, stage))
    md = (tmp_path / stage.outs.md).read_text()
    for model in ("kdm (about 20M)", "kdm (about 84M)", "GET (about 38M)"):
        assert model in md, md
    assert "the authors' own file" in md and "reference is ours (cifar10-train)" in md
    table = pd.read_csv(tmp_path / stage.outs.csv)
    assert list(table["params"]) == [1e4 * 48 ** 2, 1e4 * 64 ** 2, 1e4 * 96 ** 2]
    assert (tmp_path / stage.plots.figure).stat().st_size > 10_000
