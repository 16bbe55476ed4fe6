"""table: gather every metrics.json into the results tables (mean and spread over training seeds), with the
published rows of kdm/published.yaml beside ours, each row saying its source and the reference set its metrics
were measured against (rows with different references are not comparable).

- table.csv: every column, one row per (experiment, model), for programs;
- table.md, table.html, table.tex (booktabs): one section per experiment with only the columns its rows have,
  the students' ratios to the teacher in view, and what every row of the section shares on one line; md and html
  end with the latent-proximity section (a row per experiment, student and space);
- table.json: our rows' headline numbers (FID, 2-D: precision) by experiment and model (DVC's metrics, read by
  `dvc exp show`);
- quality-vs-speed.png: per experiment, quality against sampling cost (ms/sample, log scale).

With evaluate.seed_sets > 1 a metric's columns are its mean over the seed sets, `<metric>_min` (distances: EDM's
reported number) and `<metric>_sets_std`, each then averaged over training seeds."""
from __future__ import annotations

import html
import logging
import math

import pandas as pd

from kdm import plots
from kdm.io import atomic_path, read_json, write_json
from kdm.reporting import METRICS, PUBLISHED, cell, headline, missing, published_rows, tabular, tex

log = logging.getLogger("kdm.table")

KEYS = ["experiment", "model"]
RATIOS = ["fid", "sw2"]             # distances: a student's over the teacher's (lower is better, 1 = the teacher's)
BORDER = ["border_dist_outliers", "border_dist_inliers", "border_ratio"]   # 2-D: where outliers' noise lies
ORDER = ["nfe", "ms_per_sample", "speedup", "params", *METRICS, *BORDER, "samples", "seed_sets", "speed_batch",
         "iterations", "train_minutes"]
ORDER = [c for base in ORDER for c in (base, f"{base}_min", f"{base}_sets_std")]     # a metric's seed-set columns
ORDER[ORDER.index("isc") + 1:ORDER.index("isc") + 1] = ["isc_splits_std"]          # IS: its spread over splits
TEXT = ["reference", "extractor"]
SKIP = {"seed", "provenance", "params_trained", "latent"}     # latent: its own section

# The sections' columns, in order, with their headers; a column no row of a section has is left out.
HEADERS = {"model": "model", "nfe": "NFE", "ms_per_sample": "ms/sample", "speedup": "speedup", "params": "params",
           "fid": "FID", "fid_min": "FID min", "fid_sets_std": "FID sets std", "fid_vs_teacher": "FID / teacher",
           "kid": "KID", "kid_min": "KID min", "kid_sets_std": "KID sets std", "isc": "IS",
           "isc_splits_std": "IS splits std", "isc_sets_std": "IS sets std", "precision": "precision",
           "precision_sets_std": "precision sets std", "recall": "recall", "recall_sets_std": "recall sets std",
           "class_acc": "class acc.", "class_acc_sets_std": "class acc. sets std", "coverage": "coverage",
           "coverage_sets_std": "coverage sets std", "sw2": "SW2", "sw2_min": "SW2 min", "sw2_sets_std": "SW2 sets std",
           "sw2_vs_teacher": "SW2 / teacher", "outlier_share": "outliers", "outlier_share_sets_std": "outliers sets std",
           "border_dist_outliers": "outliers' x_T to a border", "border_dist_inliers": "inliers' x_T to a border",
           "border_ratio": "border ratio",
           "iterations": "iterations", "train_minutes": "train min", "seeds": "seeds", "samples": "samples",
           "seed_sets": "seed sets", "speed_batch": "speed batch", "compared_at": "students compared at",
           "extractor": "evaluator", "reference": "reference", "source": "source"}
# Columns about how rows were measured: when every row of a section has the same value, it is said once above it.
CONTEXT = ["samples", "seed_sets", "speed_batch", "iterations", "seeds", "compared_at", "extractor", "reference",
           "source"]


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
    for metric in RATIOS:
        if metric in table:
            teacher = table[table["model"] == "teacher"].set_index("experiment")[metric]
            ratio = table[metric] / table["experiment"].map(teacher)
            table[f"{metric}_vs_teacher"] = ratio.where(table["nfe"] == 1)      # the one-step students
    if "iterations" in table:       # how each experiment's students were compared
        budgets = runs.dropna(subset=["iterations"]).groupby("experiment")["iterations"].nunique()
        table["compared_at"] = ["-" if pd.isna(it) else "equal iterations" if budgets[exp] == 1 else "unequal iterations"
                                for exp, it in zip(table["experiment"], table["iterations"])]
    table["source"] = "ours@" + ("/".join(sorted(c[:10] + ("+dirty" if c.endswith("+dirty") else "")
                                                 for c in commits if c)) or "unversioned")
    return table


LATENT = {"knn": "knn agreement", "ari": "ARI", "nmi": "NMI", "knn_requested": "knn (requested)",
          "ari_requested": "ARI (requested)", "nmi_requested": "NMI (requested)", "dist_corr": "distance rank corr."}


def latent(metric_files) -> pd.DataFrame:
    """The latent-proximity study of every student that has one (kdm/proximity.py), a row per (experiment, model,
    space): each measure's mean ± std over training seeds, the knn agreements with their chance level."""
    rows = [{"experiment": m["experiment"], "model": m["model"], "space": space, "labels": m["latent"]["labels"],
             **values, **{f"chance_{k}": v for k, v in m["latent"]["chance"].items()}}
            for m in map(read_json, metric_files) if "latent" in m for space, values in m["latent"]["spaces"].items()]
    if not rows:
        return pd.DataFrame()
    runs = pd.DataFrame(rows)
    grouped = runs.groupby(["experiment", "model", "space"], sort=False)
    mean, std = grouped.mean(numeric_only=True), grouped.std(ddof=1, numeric_only=True)
    out = pd.DataFrame({"labels": grouped["labels"].first(), "seeds": grouped.size()})
    for key, header in LATENT.items():
        if key in mean:
            chance = mean.get(f"chance_{key.partition('_')[2] or 'label'}") if key.startswith("knn") else None
            out[header] = [cell(v, s) + ("" if chance is None or missing(v) else f" (chance {c:.2f})")
                           for v, s, c in zip(mean[key], std[key], chance if chance is not None else mean[key])]
    return out.reset_index()


def build(metric_files, published=PUBLISHED) -> pd.DataFrame:
    return pd.concat([ours(metric_files), published_rows(published)], ignore_index=True)


def is_ours(table: pd.DataFrame) -> pd.Series:
    return table["source"].str.startswith("ours@")


# ---- sections: one per experiment, the columns its rows have ------------------------------------------------
def sections(table: pd.DataFrame) -> list[tuple[str, dict, pd.DataFrame]]:
    """(experiment, what every row shares {header: text}, its rows as text under their headers), experiments we ran
    first. A metric is shown as mean ± std over training seeds where it has several."""
    ran = list(dict.fromkeys(table.loc[is_ours(table), "experiment"]))
    out = []
    for exp in ran + [e for e in dict.fromkeys(table["experiment"]) if e not in ran]:
        rows = table[table["experiment"] == exp]
        columns = [c for c in HEADERS if c in rows and rows[c].replace("-", pd.NA).notna().any()]
        columns += [c for c in rows if c not in HEADERS and c not in KEYS and not c.endswith("_std")
                    and pd.api.types.is_numeric_dtype(rows[c]) and rows[c].notna().any()]     # new metrics too
        shared = {}
        for c in [c for c in CONTEXT if c in columns]:
            values = {v for v in rows[c] if not missing(v)}
            if len(values) == 1:        # rows without it (e.g. no timing for real data) don't have it to differ
                shared[HEADERS[c]] = cell(values.pop(), math.nan)
                columns.remove(c)
        text = pd.DataFrame({HEADERS.get(c, c): [_count(v) if c == "params" else cell(v, s)
                                                 for v, s in zip(rows[c], _spread(rows, c))] for c in columns})
        out.append((exp, shared, text))
    return out


def _spread(rows: pd.DataFrame, column: str):
    return rows[f"{column}_std"] if f"{column}_std" in rows else [math.nan] * len(rows)


def _count(value) -> str:
    """A parameter count as people quote it: 3618, 78.3k, 19.0M."""
    if missing(value):
        return "-"
    return f"{value / 1e6:.1f}M" if value >= 1e6 else f"{value / 1e3:.1f}k" if value >= 1e4 else str(int(value))


def _title(exp: str, table: pd.DataFrame) -> str:
    return exp if is_ours(table[table["experiment"] == exp]).any() else f"{exp} (published rows only: not run here)"


SHARED = "Every row where it applies: "
NOTE = ("Ratios X / teacher: a student's metric over the teacher's of the same run (distances: lower is better, "
        "1 is the teacher's). speedup: the teacher's ms/sample over the student's, both timed in the student's "
        "evaluation at the same batch, one after the other (each row's ms/sample comes from its own evaluation run, "
        "so their ratio is the noisier one). "
        "Rows measured against different references or with different evaluators are not comparable.")


LATENT_NOTE = ("Does proximity in a space go with the samples' semantics? Per space, on the first samples of each "
               "evaluation: the share of a point's nearest neighbours whose sample has its label (beside chance), "
               "agreement of k-means clusters of the space with the labels (ARI, NMI), and the rank correlation of "
               "distances in the space with distances of the samples' evaluator features (kdm/proximity.py). "
               "x_T_projected: x_T through a random Gaussian matrix, a control.")


def markdown(table: pd.DataFrame, latent_rows: pd.DataFrame | None = None) -> str:
    parts = [f"# Results\n\n{NOTE}\n"]
    for exp, shared, text in sections(table):
        parts.append(f"## {_title(exp, table)}\n")
        if shared:
            parts.append(SHARED + "; ".join(f"{k} {v}" for k, v in shared.items()) + ".\n")
        parts.append(text.to_markdown(index=False, colalign=["left"] + ["right"] * (len(text.columns) - 1)) + "\n")
    if latent_rows is not None and len(latent_rows):
        parts.append(f"## Latent proximity\n\n{LATENT_NOTE}\n")
        parts.append(latent_rows.to_markdown(index=False) + "\n")
    return "\n".join(parts)


def html_page(table: pd.DataFrame, latent_rows: pd.DataFrame | None = None) -> str:
    """The same sections as a standalone page (what the Snakemake report shows)."""
    body = [f"<h1>Results</h1><p>{html.escape(NOTE)}</p>"]
    for exp, shared, text in sections(table):
        body.append(f"<h2>{html.escape(_title(exp, table))}</h2>")
        if shared:
            body.append(f"<p>{SHARED}" + "; ".join(f"<b>{html.escape(k)}</b> {html.escape(v)}"
                                                   for k, v in shared.items()) + ".</p>")
        body.append(text.to_html(index=False, border=0, classes="results"))
    if latent_rows is not None and len(latent_rows):
        body.append(f"<h2>Latent proximity</h2><p>{html.escape(LATENT_NOTE)}</p>")
        body.append(latent_rows.to_html(index=False, border=0, classes="results"))
    style = ("body{font-family:sans-serif;margin:1.5em;color:#222}table.results{border-collapse:collapse;"
             "margin-bottom:1.5em}table.results th,table.results td{padding:.25em .7em;border-bottom:1px solid #ccc;"
             "text-align:right}table.results td:first-child,table.results th:first-child{text-align:left}")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>KDM results</title><style>{style}</style>"
            f"</head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def latex(table: pd.DataFrame) -> str:
    """A LaTeX fragment for papers (\\input it; needs \\usepackage{booktabs}): one tabular per experiment."""
    parts = ["% Generated by `python -m kdm table` from results/table.csv; needs \\usepackage{booktabs}.\n"]
    for exp, shared, text in sections(table):
        lines = [f"% {tex(_title(exp, table))}" + (": " + "; ".join(f"{k} {v}" for k, v in shared.items())
                                                     if shared else "")]
        lines += tabular(text, "l" + "r" * (len(text.columns) - 1), heading=_title(exp, table)) + [""]
        parts.append("\n".join(lines))
    return "\n".join(parts)


def summary(table: pd.DataFrame) -> dict:
    """Our rows' headline numbers, {experiment: {model: {metric: value}}} (the mean over training seeds): what
    `dvc exp show` lists per experiment, few columns so that they fit a terminal; every number is in table.csv and
    each evaluation's metrics.json (DVC's metrics too, which `dvc metrics diff` compares)."""
    out = {}
    for exp, rows in table[is_ours(table)].groupby("experiment", sort=False):
        metric = headline(rows)
        out[exp] = {row["model"]: {metric: float(row[metric])} for _, row in rows.iterrows()
                    if not missing(row[metric])}
    return out


def run(stage, P):
    table, latent_rows = build(stage.deps.metrics), latent(stage.deps.metrics)
    with atomic_path(stage.outs.csv) as tmp:
        table.to_csv(tmp, index=False)
    for path, text in ((stage.outs.md, markdown(table, latent_rows)), (stage.outs.html, html_page(table, latent_rows)),
                       (stage.outs.tex, latex(table))):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    write_json(stage.metrics.summary, summary(table))
    ours = table[is_ours(table)]
    metrics = {exp: headline(rows) for exp, rows in ours.groupby("experiment")}
    plots.quality_vs_speed(ours, table[~is_ours(table)], metrics, stage.plots.quality_vs_speed)
    log.info("table:\n%s", markdown(table, latent_rows))
