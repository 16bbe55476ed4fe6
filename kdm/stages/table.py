"""table: gather every metrics.json into results/table.csv and results/table.md (mean and spread over
training seeds), with the published rows of kdm/published.yaml beside ours, each row saying its source and the
reference set its metrics were measured against (rows with different references are not comparable).
With evaluate.seed_sets > 1 a metric's columns are its mean over the seed sets, `<metric>_min` (distances: EDM's
reported number) and `<metric>_sets_std`, each then averaged over training seeds."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import yaml

from kdm.io import atomic_path, read_json

log = logging.getLogger("kdm.table")

PUBLISHED = Path(__file__).parents[1] / "published.yaml"      # facts from papers, shipped with the code
KEYS = ["experiment", "model"]
ORDER = ["nfe", "ms_per_sample", "speedup", "params", "fid", "kid", "precision", "recall", "class_acc", "coverage", "sw2",
         "outlier_share", "samples", "seed_sets", "iterations", "train_minutes"]
ORDER = [c for base in ORDER for c in (base, f"{base}_min", f"{base}_sets_std")]     # a metric's seed-set columns
TEXT = ["reference", "extractor"]
SKIP = {"seed", "speed_batch", "provenance", "params_trained"}


def ours(metric_files) -> pd.DataFrame:
    records = [read_json(f) for f in metric_files]
    runs = pd.DataFrame(records)
    commits = {m["provenance"]["commit"] for m in records}
    known = [c for c in ORDER if c in runs] + [c for c in runs if c not in ORDER + TEXT + KEYS and c not in SKIP]
    grouped = runs.groupby(KEYS, sort=False)
    table = pd.concat([grouped[known].mean(), grouped[known].std(ddof=1).add_suffix("_std")], axis=1)
    table["seeds"] = grouped["seed"].apply(lambda s: ",".join(str(int(v)) for v in s.dropna()) or "-")
    for c in TEXT:
        if c in runs:
            table[c] = grouped[c].first()
    table = table.reset_index()
    if "iterations" in table:       # how each experiment's students were compared
        budgets = runs.dropna(subset=["iterations"]).groupby("experiment")["iterations"].nunique()
        table["compared_at"] = ["-" if pd.isna(it) else "equal iterations" if budgets[exp] == 1 else "unequal iterations"
                                for exp, it in zip(table["experiment"], table["iterations"])]
    table["source"] = "ours@" + ("/".join(sorted(c[:10] + ("+dirty" if c.endswith("+dirty") else "")
                                                 for c in commits if c)) or "unversioned")
    return table


PUBLISHED_KEYS = {"experiment", "model", "params", "nfe", "fid", "source", "reference"}
PUBLISHED_REQUIRED = {"experiment", "model", "source", "reference"}


def published_rows(path=PUBLISHED) -> pd.DataFrame:
    rows = yaml.safe_load(Path(path).read_text())
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) - PUBLISHED_KEYS or not PUBLISHED_REQUIRED <= set(row):
            raise ValueError(f"{path}: row {i + 1} is {row!r}; expected {', '.join(sorted(PUBLISHED_REQUIRED))} "
                             "(the reference set, or unknown where the source does not say) and any of "
                             f"{sorted(PUBLISHED_KEYS)} (quote values that contain commas)")
    # every published number is an Inception FID on 50k samples (benchmarks.md)
    return pd.DataFrame(rows).assign(samples=50000, extractor="inception-v3-compat")


def build(metric_files, published=PUBLISHED) -> pd.DataFrame:
    return pd.concat([ours(metric_files), published_rows(published)], ignore_index=True)


def markdown(table: pd.DataFrame) -> str:
    """mean ± std where a metric has several seeds."""
    base = [c for c in table.columns if not c.endswith("_std")]
    out = table[base].copy().astype(object)
    for c in base:
        if f"{c}_std" in table:
            out[c] = [_fmt(m, s) for m, s in zip(table[c], table[f"{c}_std"])]
    return out.fillna("-").to_markdown(index=False) + "\n"


def _fmt(mean, std):
    if pd.isna(mean):
        return "-"
    text = str(int(mean)) if float(mean).is_integer() and abs(mean) >= 1 else f"{mean:.4g}"
    return text if pd.isna(std) else f"{text} ± {std:.2g}"


def run(stage, P):
    table = build(stage.deps.metrics)
    with atomic_path(stage.outs.csv) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(stage.outs.md) as tmp:
        tmp.write_text(markdown(table))
    log.info("table:\n%s", markdown(table))
