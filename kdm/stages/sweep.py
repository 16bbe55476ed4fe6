"""sweep: one sweep's table and figure (params.yaml `sweeps:`). Every point's students were trained and evaluated as
the experiment's own are (a point equal to the experiment's student is that student); this gathers their
evaluations: per point and model, each metric's mean ± std over the sweep's seeds, the sampling parameter count,
training minutes, the pairs trained on and the teacher evaluations those pairs cost.

- <sweep>.csv: every column, one row per (point, model); <sweep>.md and <sweep>.tex (booktabs) to read;
- <sweep>.json: the headline number (FID, 2-D: precision) per point and model, for `dvc exp show` / `metrics diff`;
- <sweep>.png: the headline number against the axis (or the sweep's x, e.g. params), the teacher and the experiment's
  own students as lines, and the published rows of kdm/published.yaml that have that x (e.g. the authors'
  model-size points at their parameter counts), marked not comparable where their reference differs from ours."""
from __future__ import annotations

import logging

import pandas as pd

from kdm import plots
from kdm.config import point_settings
from kdm.io import atomic_path, read_json, write_json
from kdm.reporting import LOWER_IS_BETTER, METRICS, cell, headline, published_rows, tabular

log = logging.getLogger("kdm.sweep")



def gather(stage, P) -> tuple[pd.DataFrame, dict]:
    """One row per (point, model, seed): the point's axis values, its run's evaluation, pairs and teacher cost;
    and the teacher's evaluation."""
    teacher = read_json(stage.deps.teacher)
    count = P["pairs"].get("count")
    rows = []
    for point, values, model, seed, path in stage.args["runs"]:
        m = read_json(path)
        pairs = point_settings(values, model).get("pairs_used", count)
        rows.append({"point": point, **dict(values), "model": model, "seed": seed,
                     **{k: m[k] for k in (*METRICS, "params", "iterations", "train_minutes") if k in m},
                     "pairs": pairs, "teacher_nfe": None if pairs is None else pairs * teacher["nfe"]})
    return pd.DataFrame(rows), teacher


def summarise(runs: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Mean and std over seeds per (point, model), in the sweep's point order."""
    numbers = [c for c in (*METRICS, "params", "iterations", "train_minutes", "pairs", "teacher_nfe") if c in runs]
    groups = runs.groupby(["point", "model"], sort=False)
    mean, std = groups[numbers].mean(), groups[numbers].std(ddof=1)
    out = groups[axes].first().join(mean).join(std[[c for c in METRICS if c in std]].add_suffix("_std"))
    return out.join(groups.size().rename("seeds")).reset_index()


def readable(table: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    metrics = [c for c in METRICS if c in table and table[c].notna().any()]
    out = table[["point", "model", "seeds"]].copy()
    for c in metrics:
        out[c] = [cell(v, s) for v, s in zip(table[c], table.get(f"{c}_std", [None] * len(table)))]
    for c, name in (("params", "params"), ("train_minutes", "train min"), ("pairs", "pairs"),
                    ("teacher_nfe", "teacher NFE")):
        if c in table:
            out[name] = [cell(v) for v in table[c]]
    return out


def latex(text: pd.DataFrame, title: str) -> str:
    return "\n".join([f"% {title}; needs \\usepackage{{booktabs}}", *tabular(text, "ll" + "r" * (len(text.columns) - 2)),
                      ""])


def run(stage, P):
    sweep = stage.args["sweep"]
    axes = list(P[sweep]["axes"])
    runs, teacher = gather(stage, P)
    table = summarise(runs, axes)
    metric = headline(table)
    with atomic_path(stage.outs.csv) as tmp:
        table.to_csv(tmp, index=False)
    text = readable(table, axes)
    title = (f"sweep {sweep} of {stage.args['exp']}: {', '.join(axes)} ({P[sweep].get('mode', 'grid')}); "
             f"mean ± std over seeds {sorted(runs['seed'].unique().tolist())}; teacher {metric} "
             f"{cell(teacher.get(metric))} at {teacher['nfe']} NFE")
    with atomic_path(stage.outs.tex) as tmp:
        tmp.write_text(latex(text, title))
    write_json(stage.metrics.summary, {p: {m: {metric: float(v)} for m, v in zip(rows["model"], rows[metric])}
                                       for p, rows in table.groupby("point", sort=False)})
    own = pd.DataFrame([read_json(path) for path in stage.deps.own])      # the experiment's own students
    x = P[sweep].get("x", axes[0] if len(axes) == 1 else None)
    published = published_rows()
    published = published[(published["experiment"] == stage.args["exp"]) & published[x].notna()
                          & published[metric].notna()] if {x, metric} <= set(published) else published.iloc[:0]
    shown = "" if published.empty else (
        f"\nPublished, on the same x ({x}); comparable only where the reference is ours "
        f"({teacher.get('reference')}):\n\n"
        + published[["model", x, metric, "source", "reference"]].map(cell).to_markdown(index=False) + "\n")
    with atomic_path(stage.outs.md) as tmp:
        tmp.write_text(f"## {title}\n\n{text.to_markdown(index=False)}\n{shown}")
    plots.sweep(table, x, metric, metric in LOWER_IS_BETTER, teacher.get(metric),
                own.groupby("model", sort=False)[metric].mean().to_dict(), published, teacher.get("reference"),
                stage.plots.figure, title)
    log.info("%s\n%s", title, text.to_markdown(index=False))
