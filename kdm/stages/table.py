"""table: gather every metrics.json into results/table.csv and results/table.md (mean and spread over seeds)."""
from __future__ import annotations

import logging

import pandas as pd

from kdm.io import atomic_path, read_json

log = logging.getLogger("kdm.table")

KEYS = ["experiment", "model"]
FIRST = ["nfe", "ms_per_sample", "params"]
SKIP = {"seed", "samples", "speed_batch", "provenance", "params_trained"}


def build(metric_files) -> pd.DataFrame:
    records = [read_json(f) for f in metric_files]
    runs = pd.DataFrame(records)
    commits = {m["provenance"]["commit"] for m in records}
    values = [c for c in runs.columns if c not in SKIP and c not in KEYS]
    values = FIRST + [c for c in values if c not in FIRST]
    grouped = runs.groupby(KEYS, sort=False)
    table = grouped[values].mean()
    spread = grouped[values].std(ddof=1).add_suffix("_std")
    table = pd.concat([table, spread], axis=1)
    table["seeds"] = grouped["seed"].apply(lambda s: ",".join(str(int(v)) for v in s.dropna()) or "-")
    table["source"] = "ours@" + ("/".join(sorted(c[:10] + ("+dirty" if c.endswith("+dirty") else "")
                                                 for c in commits if c)) or "unversioned")
    return table.reset_index()


def markdown(table: pd.DataFrame) -> str:
    """mean ± std where a metric has several seeds."""
    base = [c for c in table.columns if not c.endswith("_std")]
    out = table[base].copy().astype(object)
    for c in base:
        if f"{c}_std" in table:
            out[c] = [_fmt(m, s) for m, s in zip(table[c], table[f"{c}_std"])]
    return out.to_markdown(index=False) + "\n"


def _fmt(mean, std):
    if pd.isna(mean):
        return "-"
    text = str(int(mean)) if float(mean).is_integer() and abs(mean) >= 1 else f"{mean:.4g}"
    return text if pd.isna(std) else f"{text} ± {std:.2g}"


def run(stage, P):
    table = build(list(stage.deps))
    csv_path, md_path = stage.outs
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(md_path) as tmp:
        tmp.write_text(markdown(table))
    log.info("table:\n%s", markdown(table))
