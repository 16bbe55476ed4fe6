"""End to end, for real: Snakemake and DVC on tiny params, including re-runs after a param change."""
import copy
import hashlib
import re

import sys

import pytest
import yaml

from kdm import dag

from workspace import TINY, Workspace

pytestmark = pytest.mark.e2e

TEACHER_SIDE = ("teacher/", "pairs/", "store/", "eval/teacher/")
TABLE = set(dag.table({"experiments": []}).outputs)       # the table stage's files (tables, figure)


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in after if before.get(k) != after[k]}


def assert_only_kdm_reran(changed_files: set[str]):
    assert changed_files, "nothing re-ran"
    assert dag.CHECKED in changed_files         # params.yaml changed: checked again (same bytes, re-runs nothing)
    for f in changed_files - {dag.CHECKED}:
        assert "/kdm-s0/" in f or f in TABLE, f"{f} re-ran but depends only on other params"
    assert any(f.endswith("kdm-s0/model.pt") for f in changed_files)
    assert any(f.endswith("eval/kdm-s0/metrics.json") for f in changed_files)
    assert "results/table.csv" in changed_files


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A workspace built once by Snakemake (the expensive part), shared by the tests below in order."""
    from conftest import tiny_params
    ws = Workspace(tmp_path_factory.mktemp("ws"), tiny_params())
    ws.snakemake()
    return ws


def test_snakemake_builds_the_table(built):
    table = (built.path / "results/table.csv").read_text().splitlines()
    assert table[0].startswith("experiment,model,nfe,ms_per_sample,speedup,params,precision,coverage,sw2")
    ours = [row.split(",")[1] for row in table[1:] if ",ours@" in row]
    assert ours == ["teacher", "kdm", "kd"]
    for png in ("teacher/loss.png", "kdm-s0/loss.png", "eval/kdm-s0/analysis.png", "eval/teacher/samples.png"):
        assert (built.path / "results/checkerboard" / png).stat().st_size > 1000
    assert "Nothing to be done" in built.snakemake().stderr


def test_dvc_adopts_snakemake_outputs_without_rerunning(built):
    before = built.outputs()
    built.dvc("commit", "-f")
    status = built.dvc("status").stdout
    assert "up to date" in status, status
    r = built.dvc("repro")
    assert "didn't change, skipping" in r.stdout and "Running stage" not in r.stdout, r.stdout
    assert built.outputs() == before


def test_changing_kdm_lr_reruns_only_kdm(built):
    params = yaml.safe_load((built.path / "params.yaml").read_text())
    params["checkerboard"]["kdm"]["lr"] *= 2
    built.write_params(params, dvc_yaml=False)

    before = built.outputs()
    built.snakemake()
    assert_only_kdm_reran(changed(before, built.outputs()))

    # DVC sees the same change (its lock still has the old lr) and re-runs the same stages
    before = built.outputs()
    r = built.dvc("repro")
    assert_only_kdm_reran(changed(before, built.outputs()))
    assert "Running stage 'checkerboard-train-kd-s0'" not in r.stdout

    # DVC links an output whose bytes its cache already holds to that older file: table.json (the headline numbers,
    # unchanged here) is then older than the evaluations it is made from, and Snakemake makes the table once more
    rerun = built.snakemake().stderr
    jobs = [rule for rule in re.findall(r"^(?:local)?rule (\w+):", rerun, re.M) if rule != "all"]
    assert "Nothing to be done" in rerun or jobs == ["table"], rerun[-2000:]
    assert "Nothing to be done" in built.snakemake().stderr
    assert "Running stage" not in built.dvc("repro").stdout


def test_dvc_alone_reproduces_snakemake_bytes(built, tmp_path):
    """Same params, same bytes on CPU, whichever tool drives the DAG."""
    from conftest import tiny_params
    ws = Workspace(tmp_path, yaml.safe_load((built.path / "params.yaml").read_text()))
    ws.dvc("repro")
    for rel in ("teacher/model.pt", "pairs/shard-0/x0.npy", "store/x0.npy", "store/manifest.json",
                "kdm-s0/model.pt", "kd-s0/model.pt", "eval/teacher/samples/x0.npy"):
        a, b = built.path / "results/checkerboard" / rel, ws.path / "results/checkerboard" / rel
        assert sha(a) == sha(b), f"{rel} differs between the Snakemake and DVC runs"
    import pandas as pd
    timings = ["ms_per_sample", "ms_per_sample_std", "speedup", "speedup_std", "train_minutes", "train_minutes_std"]
    smk, dvc = (pd.read_csv(w.path / "results/table.csv").drop(columns=timings) for w in (built, ws))
    pd.testing.assert_frame_equal(smk, dvc)         # quality columns agree exactly; the rest are timings


@pytest.mark.parametrize("mutate,key", [
    (lambda p: p["checkerboard"]["kdm"].update(lr="fast"), "checkerboard.kdm.lr"),
    (lambda p: p["checkerboard"]["pairs"].update(shards=3), "checkerboard.pairs.shards"),
    (lambda p: p["checkerboard"]["teacher"].update(unknown_key=1), "unknown_key"),
])
def test_invalid_params_stop_both_tools_before_writing(tmp_path, params, mutate, key):
    ws = Workspace(tmp_path, params)
    bad = copy.deepcopy(params)
    mutate(bad)
    ws.write_params(bad, dvc_yaml=False)
    for r in (ws.snakemake(check=False), ws.dvc("repro", check=False)):
        assert r.returncode != 0
        assert key in r.stdout + r.stderr, r.stdout + r.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*"))


def test_decomposed_operator_runs_through_the_pipeline(tmp_path, params):
    params["checkerboard"]["kdm"]["operator"] = {"kind": "decomposed", "eigen_loss": "target"}
    params["checkerboard"]["kdm"]["loss_weights"].update(inverse=1.0, eigen=0.1)
    ws = Workspace(tmp_path, params)
    ws.snakemake("results/checkerboard/eval/kdm-s0/metrics.json")
    run = tmp_path / "results/checkerboard/kdm-s0"
    assert (run / "spectrum.png").stat().st_size > 1000
    header = (run / "train.csv").read_text().splitlines()[0].split(",")
    assert {"inverse", "eigen"} <= set(header)
    import json
    assert json.loads((run / "config.json").read_text())["kwargs"]["operator"]["kind"] == "decomposed"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The conditional digits experiment, tiny, built once by Snakemake."""
    from conftest import tiny_digits
    params = tiny_digits("digits-cond")
    params["digits-cond"]["evaluate"]["seed_sets"] = 2          # EDM's protocol, in small
    ws = Workspace(tmp_path_factory.mktemp("digits"), params)
    ws.snakemake()
    return ws


def test_digits_table_has_image_metrics_floor_and_published_rows(digits):
    import pandas as pd
    table = pd.read_csv(digits.path / "results/table.csv")
    ours = table[table["source"].str.startswith("ours@")].set_index("model")
    assert list(ours.index) == ["data-resampled", "data-halves", "teacher", "kdm", "kd"]
    for model in ("teacher", "kdm", "kd", "data-resampled"):
        for col in ("fid", "kid", "precision", "recall", "class_acc"):
            assert ours.loc[model, col] == ours.loc[model, col], f"{model}.{col} is missing"
    assert pd.isna(ours.loc["data-halves", "class_acc"]) and ours.loc["data-halves", "fid"] > 0
    assert ours["extractor"].str.match(r"kdm-classifier-[0-9a-f]{16} \(held-out acc 0\.\d{3}\)").all()
    assert ours.loc["kdm", "compared_at"] == ours.loc["kd", "compared_at"] == "equal iterations"
    assert ours.loc["kdm", "iterations"] == 10 and ours.loc["kdm", "nfe"] == 1 and ours.loc["teacher", "nfe"] == 7
    assert ours.loc["kdm", "speedup"] > 1 and ours.loc["kd", "speedup"] > 1 and pd.isna(ours.loc["teacher", "speedup"])
    assert (table["reference"].notna()).all() and (ours["reference"] == "digits-train").all()
    for model in ("teacher", "kdm", "kd"):      # two seed sets: mean, min and spread over them
        assert ours.loc[model, "seed_sets"] == 2 and ours.loc[model, "fid_min"] <= ours.loc[model, "fid"]
        assert ours.loc[model, "fid_sets_std"] > 0 and ours.loc[model, "class_acc_sets_std"] >= 0
    published = table[~table["source"].str.startswith("ours@")]
    assert {"cifar10-uncond", "cifar10-cond"} <= set(published["experiment"])
    assert published.loc[(published["model"] == "GET-B") & (published["experiment"] == "cifar10-uncond"),
                         "fid"].tolist() == [7.39]
    assert "digits-cond" in (digits.path / "results/table.md").read_text()


def test_every_student_evaluation_measures_latent_proximity_and_the_digits_their_inception_score(digits, built):
    """kdm/proximity.py's measures in every space of each student (KD: its noise and the control), with the
    classifier's and the requested labels on conditional digits; IS from the classifier's logits beside FID; the
    2-D students' border distances; the table's latent section."""
    import json
    import math
    evaluations = {(ws, model): json.loads((ws.path / f"results/{exp}/eval/{model}-s0/metrics.json").read_text())
                   for ws, exp in ((digits, "digits-cond"), (built, "checkerboard")) for model in ("kdm", "kd")}
    for (ws, model), m in evaluations.items():
        latent = m["latent"]
        assert set(latent["spaces"]) == ({"x_T", "x_T_projected", "z_T", "Cz_T", "z_0"} if model == "kdm"
                                         else {"x_T", "x_T_projected"}) and latent["samples"] == 100
        keys = {"knn", "ari", "nmi", "dist_corr"} | ({"knn_requested", "ari_requested", "nmi_requested"}
                                                     if ws is digits else set())
        for space, values in latent["spaces"].items():
            assert set(values) == keys and all(math.isfinite(v) for v in values.values()), (model, space, values)
            assert 0 <= values["knn"] <= 1 and -1 <= values["dist_corr"] <= 1
        assert set(latent["chance"]) == ({"label", "requested"} if ws is digits else {"label"})
        assert 0 < latent["chance"]["label"] <= 1          # 1: a tiny student makes one label only
        if ws is digits:
            assert latent["labels"] == "the digit classifier's prediction" and m["isc"] >= 1 and m["isc_splits_std"] >= 0
        else:
            assert latent["labels"] == "the board cell of the sample" and "isc" not in m
            assert m["outlier_share"] == 0 or m["border_dist_outliers"] > 0
            assert m["border_ratio"] is None or m["border_ratio"] == m["border_dist_outliers"] / m["border_dist_inliers"]
    teacher = json.loads((digits.path / "results/digits-cond/eval/teacher/metrics.json").read_text())
    assert teacher["isc"] >= 1 and "latent" not in teacher
    for ws in (digits, built):
        md = (ws.path / "results/table.md").read_text()
        assert "## Latent proximity" in md and "| z_T " in md and "(chance 0." in md


def test_digits_outputs_and_conditional_store(digits):
    import numpy as np
    from edm_generate import edm_generate_latents
    root = digits.path / "results/digits-cond"
    for png in ("classifier/loss.png", "teacher/loss.png", "kdm-s0/loss.png", "kdm-s0/spectrum.png",
                "eval/teacher/samples.png", "eval/kdm-s0/samples.png", "eval/kd-s0/samples.png",
                "eval/kdm-s0/analysis.png", "eval/kdm-s0/latent.png", "eval/kd-s0/latent.png",
                "eval/data-resampled/samples.png"):
        assert (root / png).stat().st_size > 1000, png
    seeds, labels = np.load(root / "store/seeds.npy"), np.load(root / "store/labels.npy")
    assert seeds.tolist() == list(range(128)) and labels.tolist() == edm_generate_latents(seeds, (1, 8, 8), 10)[1]
    assert "adv" in (root / "kdm-s0/train.csv").read_text().splitlines()[0].split(",")


def test_snapshot_curves_while_the_table_reports_the_final_model(digits):
    import json
    import pandas as pd
    import torch
    from kdm.models import load_model
    root = digits.path / "results/digits-cond"
    for run in ("kdm-s0", "kd-s0"):
        index = json.loads((root / f"{run}/snapshots/index.json").read_text())
        assert [e["iteration"] for e in index] == [5, 10]
        curve = pd.read_csv(root / f"eval/{run}/curve.csv")
        assert curve["step"].tolist() == [5, 10] and (curve["samples"] == 100).all()
        assert curve[["fid", "kid", "precision", "recall", "class_acc"]].notna().all().all()
        assert curve["fid"].iloc[0] != curve["fid"].iloc[1]
        assert (root / f"eval/{run}/curve.png").stat().st_size > 1000
    # the last snapshot is the final model; the table's FID is the evaluate stage's, on all its samples
    last = torch.load(root / "kdm-s0/snapshots/000000010.pt", weights_only=True)["state_dict"]
    final = load_model(root / "kdm-s0/model.pt").state_dict()
    assert all(torch.equal(last[k], final[k]) for k in final)
    table = pd.read_csv(digits.path / "results/table.csv")
    kdm = table[(table["experiment"] == "digits-cond") & (table["model"] == "kdm")].iloc[0]
    assert kdm["fid"] == json.loads((root / "eval/kdm-s0/metrics.json").read_text())["fid"] and kdm["samples"] == 200


def test_export_writes_edms_pngs_of_a_built_model(digits, tmp_path):
    """`export`: seed s's image as EDM's generate.py names and quantises it, from s's noise and label."""
    import numpy as np
    import torch
    from PIL import Image
    from kdm.images import to_uint8
    from kdm.models import load_model
    store = digits.path / "results/digits-cond/store"
    xT, labels = np.load(store / "xT.npy")[:12], np.load(store / "labels.npy")[:12]
    digits.run(sys.executable, "-m", "kdm", "export", "digits-cond", "kdm-s0", "--seeds", "0-3,4-11",
               "--outdir", str(tmp_path / "kdm"), "--batch", "5")
    net = load_model(digits.path / "results/digits-cond/kdm-s0/model.pt")
    want = to_uint8(net(torch.from_numpy(xT), torch.from_numpy(labels)))[:, 0].numpy().astype(int)
    got = np.stack([np.asarray(Image.open(tmp_path / f"kdm/{s:06d}.png")) for s in range(12)])
    assert got.dtype == np.uint8 and got.shape == (12, 8, 8)
    # this process's thread count and batches differ from export's: float rounding may move a pixel across a level
    assert np.abs(got - want).max() <= 1 and (got != want).mean() < 0.01
    digits.run(sys.executable, "-m", "kdm", "export", "digits-cond", "teacher", "--seeds", "1000-1001",
               "--outdir", str(tmp_path / "teacher"), "--subdirs")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "teacher").rglob("*.png")) == [
        "teacher/001000/001000.png", "teacher/001000/001001.png"]
    r = digits.run(sys.executable, "-m", "kdm", "export", "digits-cond", "kdm-s7", "--seeds", "0-1", "--outdir",
                   str(tmp_path / "x"), check=False)
    assert r.returncode == 2 and "teacher, kdm-s0, kd-s0" in r.stderr and not (tmp_path / "x").exists()


def test_dvc_adopts_the_image_pipeline(digits):
    digits.dvc("commit", "-f")
    r = digits.dvc("repro")
    assert "Running stage" not in r.stdout, r.stdout


def test_benchmark_target_under_snakemake_then_dvc(digits):
    """The benchmark (not in the default target) on the tiny image experiment: every section measured, and
    DVC, which runs it from its own file, takes Snakemake's outputs as current once adopted."""
    import pandas as pd
    params = yaml.safe_load((digits.path / "params.yaml").read_text())
    params["benchmark"] = TINY["benchmark"]
    digits.write_params(params)
    assert "benchmark" not in digits.snakemake("-n").stdout         # not part of the default run
    digits.snakemake("benchmark")
    t = pd.read_csv(digits.path / "results/benchmarks.csv")
    s = t[t["section"] == "sampling"].set_index(["model", "batch"])
    assert s.loc[("teacher", 4), "nfe"] == 7 and s.loc[("kdm", 4), "nfe"] == 1
    assert s.loc[("kdm", 4), "speedup"] > 1 and s.loc[("kd", 4), "speedup"] > 1
    train = t[t["section"] == "training"]
    assert list(train["model"]) == ["kdm", "kd"] and (train["read_over_consume"] > 1).all()
    mem = t[t["section"] == "memory"]
    assert list(mem["pairs"]) == [128, 256] and (mem["peak_rss_mb"] > 0).all()
    assert list(t[t["section"] == "pairs"]["shards"]) == [1, 2]
    assert (digits.path / "results/benchmarks.png").stat().st_size > 1000
    assert "## Sampling throughput" in (digits.path / "results/benchmarks.md").read_text()
    digits.dvc("commit", "-f")
    digits.dvc("commit", "-f", "workflow/benchmark/dvc.yaml")
    r = digits.dvc("repro", "workflow/benchmark/dvc.yaml")
    assert "Running stage" not in r.stdout, r.stdout


def _report_var(html: str, name: str):
    """A JSON value the Snakemake report's page defines (`var <name> = ...`), whitespace runs in text as one space."""
    import json
    start = html.index(f"var {name} = {{") if name != "workflow_desc" else html.index(f"var {name} = ")
    value = json.JSONDecoder().raw_decode(html, start + len(f"var {name} = "))[0]
    return json.loads(" ".join(json.dumps(value).replace("\\n", " ").split()))


def test_snakemake_report_holds_every_figure_by_experiment_and_stage(digits, tmp_path):
    """`snakemake --report` (HTML and zip) after the default run and the benchmark: the table, every figure the
    run drew, grouped by experiment and stage, each with a caption naming its params, and the workflow page."""
    import zipfile
    digits.snakemake("--report", str(tmp_path / "report.html"), "all", "benchmark")
    html = (tmp_path / "report.html").read_text()
    categories, results = _report_var(html, "categories"), _report_var(html, "results")
    figures = {p.relative_to(digits.path).as_posix() for p in (digits.path / "results").rglob("*.png")}
    assert len(figures) == 17 and set(results) == figures | {"results/table.html"}
    exp = sorted(p for p in figures if p.startswith("results/digits-cond/"))
    assert {c: {s: sorted(files) for s, files in subs.items()} for c, subs in categories.items()} == {
        "All experiments": {"Other": ["results/quality-vs-speed.png", "results/table.html"]},
        "Benchmark": {"Other": ["results/benchmarks.png"]},
        "digits-cond": {"training": [p for p in exp if p.endswith(("/loss.png", "/spectrum.png"))],
                        "samples": [p for p in exp if p.endswith(("/samples.png", "/analysis.png"))],
                        "latent proximity": [p for p in exp if p.endswith("/latent.png")],
                        "snapshot curves": [p for p in exp if p.endswith("/curve.png")]}}
    assert all(r["caption"].strip() for r in results.values())
    assert "10 iterations at batch 32" in results["results/digits-cond/kdm-s0/loss.png"]["caption"]
    assert "one every 5 iterations" in results["results/digits-cond/eval/kd-s0/curve.png"]["caption"]
    assert "(7 network evaluations)" in results["results/digits-cond/eval/teacher/samples.png"]["caption"]
    assert results["results/digits-cond/kdm-s0/spectrum.png"]["labels"] == {"model": "kdm", "seed": "0",
                                                                           "figure": "Koopman spectrum"}
    assert "Experiments in this run: digits-cond." in _report_var(html, "workflow_desc")
    digits.snakemake("--report", str(tmp_path / "report.zip"), "all", "benchmark")
    names = zipfile.ZipFile(tmp_path / "report.zip").namelist()
    assert "report/report.html" in names
    raw = sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("report/data/raw/"))
    assert raw == sorted(f.rsplit("/", 1)[1] for f in figures | {"results/table.html"}), raw
