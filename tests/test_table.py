"""The results table: published rows beside ours, mean ± spread over seeds."""
import pytest

from kdm.stages.table import markdown, published_rows


def test_published_rows_carry_their_sources():
    rows = published_rows()
    assert set(rows.columns) <= {"experiment", "model", "params", "nfe", "fid", "source", "reference", "samples",
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
                          "params": [1000.0], "params_std": [float("nan")]})
    text = markdown(table)
    assert "0.75 ± 0.05" in text and "1000 |" in text
