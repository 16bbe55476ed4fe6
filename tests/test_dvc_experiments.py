"""What DVC users expect of a pipeline, for real on a tiny workspace under Git: `dvc exp run -S` re-runs exactly
the stages a param reaches, `dvc exp show` lists each model's headline number per experiment, `dvc metrics diff`
names what changed, and `dvc plots show` draws the training curves as lines against their step."""
import json
import re

import pytest
import yaml

from conftest import tiny_params
from workspace import Workspace

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The tiny checkerboard pipeline run by `dvc repro` and committed (dvc.lock, params; results/ stays out of
    Git, as in the project), then one experiment with a lower KDM learning rate."""
    ws = Workspace(tmp_path_factory.mktemp("dvc-exp"), tiny_params())
    ws.init_git()
    ws.dvc("repro")
    ws.git_commit("baseline")
    ws.exp_run = ws.dvc("exp", "run", "-n", "low-lr", "-S", "checkerboard.kdm.lr=0.001").stdout
    return ws


def test_exp_run_reruns_exactly_the_stages_the_param_reaches(repo):
    ran = set(re.findall(r"^Running stage '([^']+)'", repo.exp_run, re.M))
    assert ran == {"check", "checkerboard-train-kdm-s0", "checkerboard-evaluate-kdm-s0", "table"}, repo.exp_run
    assert yaml.safe_load((repo.path / "params.yaml").read_text())["checkerboard"]["kdm"]["lr"] == 0.001


def test_exp_show_lists_each_models_headline_number_per_experiment(repo):
    rows = json.loads(repo.dvc("exp", "show", "--json").stdout)
    baseline = next(r for r in rows if r["rev"] != "workspace")
    (exp,) = [rev for e in baseline["experiments"] for rev in e["revs"]]
    assert exp["name"] == "low-lr"
    table, evals = {}, {}
    for name, data in (("baseline", baseline["data"]), ("low-lr", exp["data"])):
        table[name] = data["metrics"]["results/table.json"]["data"]["checkerboard"]
        assert set(table[name]) == {"teacher", "kdm", "kd"}
        assert all(set(row) == {"precision"} for row in table[name].values())      # 2-D: the headline number
        evals[name] = {m: data["metrics"][f"results/checkerboard/eval/{m}-s0/metrics.json"]["data"]
                       for m in ("kdm", "kd")}
        assert data["params"]["params.yaml"]["data"]["checkerboard"]["kdm"]["lr"] == (0.001 if name == "low-lr"
                                                                                        else 0.002)
    assert table["low-lr"]["kd"] == table["baseline"]["kd"]          # the same model, not re-run
    assert evals["low-lr"]["kd"] == evals["baseline"]["kd"]
    assert evals["low-lr"]["kdm"]["sw2"] != evals["baseline"]["kdm"]["sw2"]


def test_metrics_show_and_diff_read_the_declared_metrics(repo):
    shown = json.loads(repo.dvc("metrics", "show", "--json").stdout)
    (files,) = [rev["data"] for rev in shown.values()]
    assert set(files) == {"results/table.json", "results/checkerboard/rederive.json",
                          *(f"results/checkerboard/eval/{m}/metrics.json" for m in ("teacher", "kdm-s0", "kd-s0"))}
    diff = json.loads(repo.dvc("metrics", "diff", "--json").stdout)       # the experiment's workspace vs HEAD
    assert "sw2" in diff["results/checkerboard/eval/kdm-s0/metrics.json"], diff
    assert set(diff) <= {"results/checkerboard/eval/kdm-s0/metrics.json", "results/table.json"}, diff
    # the tiny students' precision may not move; where it does, it is KDM's
    assert all(key == "checkerboard.kdm.precision" for key in diff.get("results/table.json", {})), diff


def test_plots_show_draws_training_curves_against_their_step(repo):
    plots = json.loads(repo.dvc("plots", "show", "--json").stdout)["data"]
    for run in ("teacher", "kdm-s0", "kd-s0"):
        (spec,) = plots[f"results/checkerboard/{run}/train.csv"]
        content = json.dumps(spec["content"])
        assert spec["type"] == "vega" and '"x": {"field": "step"' in content and '"field": "loss"' in content
        assert plots[f"results/checkerboard/{run}/loss.png"][0]["type"] == "image"
    assert plots["results/quality-vs-speed.png"][0]["type"] == "image"
    repo.dvc("plots", "show")
    assert "checkerboard-train-kdm-s0: loss" in (repo.path / "dvc_plots/index.html").read_text()
    # another revision's plots come from DVC's cache (results/ is not in Git): the experiment beside the baseline
    diff = json.loads(repo.dvc("plots", "diff", "HEAD", "--json").stdout)["data"]
    (spec,) = diff["results/checkerboard/kdm-s0/train.csv"]
    assert set(spec["revisions"]) == {"workspace", "HEAD"}
    assert {row["rev"] for row in spec["content"]["data"]["values"]} == {"workspace", "HEAD"}
