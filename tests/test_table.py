"""The results table: published rows beside ours, mean ± spread over seeds."""
import pytest

from kdm.stages.table import markdown, published_rows


def test_published_rows_carry_their_sources():
    rows = published_rows()
    assert set(rows.columns) <= {"experiment", "model", "params", "nfe", "fid", "source", "samples", "extractor"}
    assert (rows["extractor"] == "inception-v3-compat").all() and (rows["samples"] == 50000).all()
    assert rows["source"].notna().all()
    get_b = rows[(rows["model"] == "GET-B") & (rows["experiment"] == "cifar10-uncond")]
    assert get_b["fid"].tolist() == [7.39]
    assert "teacher (EDM, edm-cifar10-32x32-uncond-vp)" in set(rows["model"])


def test_a_malformed_published_row_is_named(tmp_path):
    bad = tmp_path / "published.yaml"
    bad.write_text("- {experiment: x, model: a (b, c), source: s}\n")   # an unquoted comma splits the value
    with pytest.raises(ValueError, match=r"published.yaml: row 1 .*quote values"):
        published_rows(bad)


def test_markdown_shows_mean_and_spread():
    import pandas as pd
    table = pd.DataFrame({"experiment": ["e"], "model": ["kdm"], "fid": [0.75], "fid_std": [0.05],
                          "params": [1000.0], "params_std": [float("nan")]})
    text = markdown(table)
    assert "0.75 ± 0.05" in text and "1000 |" in text
