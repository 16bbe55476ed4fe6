"""The results table: published rows beside ours, mean ± spread over seeds."""
import pytest

from kdm.reporting import published_rows
from kdm.stages.table import markdown


def test_published_rows_carry_their_sources():
    rows = published_rows()
    assert set(rows.columns) <= {"experiment", "model", "params", "pairs", "nfe", "fid", "isc", "source", "reference", "samples",
                                 "extractor"}
    assert (rows["extractor"] == "inception-v3-compat").all() and (rows["samples"] == 50000).all()
    assert rows["source"].notna().all() and rows["reference"].notna().all()
    # the sets benchmarks.md names: EDM against the training sets, GET against the CIFAR-10 test set
    assert set(rows.loc[rows["source"].str.contains("EDM"), "reference"]) == {"cifar10-train", "ffhq-64x64",
                                                                              "afhqv2-64x64"}
    assert set(rows.loc[rows["source"].str.startswith("GET"), "reference"]) == {"cifar10-test"}
    get_b = rows[(rows["model"] == "GET-B") & (rows["experiment"] == "cifar10-uncond")]
    assert get_b["fid"].tolist() == [7.39]
    assert "teacher (EDM, edm-cifar10-32x32-uncond-vp)" in set(rows["model"])


def test_a_malformed_published_row_is_named(tmp_path):
    bad = tmp_path / "published.yaml"
    bad.write_text("- {experiment: x, model: a (b, c), source: s, reference: r}\n")   # an unquoted comma splits it
    with pytest.raises(ValueError, match=r"published.yaml: row 1 .*quote values"):
        published_rows(bad)
    bad.write_text("- {experiment: x, model: a, source: s}\n")
    with pytest.raises(ValueError, match=r"published.yaml: row 1 .*reference"):
        published_rows(bad)


def test_seed_sets_give_each_metrics_mean_min_and_spread():
    """evaluate.seed_sets: the real checkerboard metrics of each block of samples, then mean, min and spread."""
    import torch
    from workspace import shipped
    from kdm import datasets
    from kdm.metrics import Quality
    from kdm.stages.evaluate import over_seed_sets
    P = shipped()["checkerboard"]
    ev = {**P["evaluate"], "samples": 400, "seed_sets": 3, "sw2_projections": 16}
    data = datasets.make(P["data"])
    x0, _ = data.sample(1200, torch.Generator().manual_seed(1))
    x0[400:800] *= 1.3                                   # the second set is worse
    quality = Quality(data, ev, None)
    sets = [quality(x0[i * 400:(i + 1) * 400], None) for i in range(3)]
    out = over_seed_sets(quality, x0, None, ev)
    assert out["seed_sets"] == 3 and out["sw2_min"] == min(s["sw2"] for s in sets) < out["sw2"]
    assert out["precision"] == pytest.approx(sum(s["precision"] for s in sets) / 3)
    assert out["precision_sets_std"] > 0 and "precision_min" not in out       # min only for distances
    one = over_seed_sets(quality, x0[:400], None, {**ev, "seed_sets": 1})
    assert one == {"seed_sets": 1, **sets[0]}, "one set: its metrics as they are"


def test_markdown_shows_mean_and_spread():
    import pandas as pd
    table = pd.DataFrame({"experiment": ["e"], "model": ["kdm"], "fid": [0.75], "fid_std": [0.05],
                          "params": [1000.0], "params_std": [float("nan")], "source": ["ours@abc"]})
    text = markdown(table)
    assert "0.75 ± 0.05" in text and "1000 |" in text


def _table():
    """Our rows of a 2-D and an image experiment (two training seeds of kdm) and a published row."""
    import pandas as pd

    ours = pd.DataFrame([
        dict(experiment="board", model="teacher", nfe=35, ms_per_sample=2.0, precision=0.93, coverage=0.9, sw2=0.04,
             samples=500, seed_sets=1, speed_batch=256, reference="checkerboard-density", seeds="-"),
        dict(experiment="board", model="kdm", nfe=1, ms_per_sample=0.01, speedup=200.0, precision=0.92,
             precision_std=0.01, coverage=0.8, sw2=0.06, sw2_vs_teacher=1.5, outlier_share=0.01, samples=500,
             seed_sets=1, speed_batch=256, reference="checkerboard-density", seeds="0,1", iterations=100),
        dict(experiment="cifar10-uncond", model="teacher", nfe=35, ms_per_sample=20.0, fid=2.0, kid=0.001,
             precision=0.7, recall=0.6, samples=50000, seed_sets=3, speed_batch=64, reference="cifar10-train",
             extractor="inception-v3-compat", seeds="-"),
        dict(experiment="cifar10-uncond", model="kd_100%", nfe=1, ms_per_sample=0.5, speedup=40.0, fid=5.0,
             fid_vs_teacher=2.5, kid=0.004, precision=0.6, recall=0.5, samples=50000, seed_sets=3, speed_batch=64,
             reference="cifar10-train", extractor="inception-v3-compat", seeds="0", iterations=1000),
    ]).assign(source="ours@abc")
    return pd.concat([ours, published_rows()], ignore_index=True)


def test_sections_show_only_each_experiments_columns_and_say_what_rows_share():
    from kdm.stages.table import markdown, sections
    secs = {exp: (shared, text) for exp, shared, text in sections(_table())}
    assert list(secs)[:2] == ["board", "cifar10-uncond"]          # ours first, then published-only experiments
    shared, text = secs["board"]
    assert list(text.columns) == ["model", "NFE", "ms/sample", "speedup", "precision", "coverage", "SW2",
                                  "SW2 / teacher", "outliers"]
    assert shared == {"samples": "500", "seed sets": "1", "speed batch": "256", "iterations": "100", "seeds": "0,1",
                      "reference": "checkerboard-density", "source": "ours@abc"}
    assert text.set_index("model").loc["kdm", "precision"] == "0.92 ± 0.01"
    shared, text = secs["cifar10-uncond"]          # ours and the published rows: their own references and sources
    assert {"FID", "FID / teacher", "KID", "precision", "recall", "reference", "source"} <= set(text.columns)
    assert "coverage" not in text.columns and "SW2" not in text.columns
    assert shared == {"samples": "50000", "seed sets": "3", "speed batch": "64", "iterations": "1000", "seeds": "0",
                      "evaluator": "inception-v3-compat"}
    rows = text.set_index("model")
    assert rows.loc["GET-B", "reference"] == "cifar10-test" and rows.loc["kd_100%", "FID / teacher"] == "2.5"
    assert rows.loc["GET-B", "params"] == "62.0M"
    md = markdown(_table())
    assert md.count("\n## ") == len(secs) and "## ffhq64 (published rows only: not run here)" in md


def test_latex_is_a_booktabs_fragment_that_compiles():
    import re
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path
    from kdm.stages.table import latex, sections
    tex = latex(_table())
    tabulars = re.findall(r"\\begin\{tabular\}\{([lr]+)\}\n(.*?)\\end\{tabular\}", tex, re.S)
    assert len(tabulars) == len(sections(_table()))
    for spec, body in tabulars:
        lines = body.strip().splitlines()
        assert lines[0] == r"\toprule" and lines[-1] == r"\bottomrule" and lines.count(r"\midrule") == 2
        for row in [l for l in lines if l.endswith(r"\\") and not l.startswith(r"\multicolumn")]:
            unescaped = re.sub(r"\\[&%$#_{}]|\$\\pm\$|\\textbf\{|\\\\$", "", row)
            assert unescaped.count("&") == len(spec) - 1, row               # one cell per column
            assert not re.search(r"[%$#_{}~^]", unescaped.replace("&", "")), row   # every special character escaped
    assert r"kd\_100\%" in tex and r"0.92 $\pm$ 0.01" in tex
    if shutil.which("pdflatex"):        # a TeX engine where the machine has one: the fragment renders
        with tempfile.TemporaryDirectory() as d:
            Path(d, "table.tex").write_text(tex)
            Path(d, "doc.tex").write_text("\\documentclass{article}\\usepackage{booktabs}\\usepackage[landscape]"
                                          "{geometry}\\begin{document}\\tiny\\input{table.tex}\\end{document}\n")
            r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=d,
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stdout[-3000:]


def test_summary_holds_each_experiments_headline_number_per_model():
    from kdm.stages.table import summary
    s = summary(_table())
    assert s == {"board": {"teacher": {"precision": 0.93}, "kdm": {"precision": 0.92}},       # 2-D: precision
                 "cifar10-uncond": {"teacher": {"fid": 2.0}, "kd_100%": {"fid": 5.0}}}        # images: FID