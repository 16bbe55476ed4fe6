"""How results are reported, for every table the stages write: the metrics compared, which one heads an
experiment, and how a number (± its spread) is written in a cell."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import yaml

PUBLISHED = Path(__file__).parent / "published.yaml"      # facts from papers, shipped with the code
METRICS = ["fid", "kid", "isc", "precision", "recall", "class_acc", "coverage", "sw2", "outlier_share"]
LOWER_IS_BETTER = ("fid", "kid", "sw2", "outlier_share")


def headline(rows: pd.DataFrame) -> str:
    """The headline metric of rows of one experiment: FID where they measure it, else (2-D) precision."""
    return "fid" if "fid" in rows and rows["fid"].notna().any() else "precision"


def missing(value) -> bool:
    return value is None or value == "-" or (isinstance(value, float) and math.isnan(value))


def cell(value, std=None) -> str:
    """A number as a table shows it: an integer as such, else 4 significant digits; `± std` with 2 where given."""
    if missing(value):
        return "-"
    if isinstance(value, str):
        return value
    text = str(int(value)) if float(value).is_integer() and abs(value) >= 1 else f"{value:.4g}"
    return text if missing(std) else f"{text} ± {std:.2g}"


TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
               "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex(text: str) -> str:
    """Text (a cell, a header) safe in LaTeX."""
    escaped = re.sub(r"[\\&%$#_{}~^]", lambda m: TEX_SPECIAL[m.group()], text)
    return escaped.replace(" ± ", r" $\pm$ ")


def tabular(text: pd.DataFrame, cols: str, heading: str | None = None) -> list[str]:
    """A booktabs tabular of a table of cells (every header and cell escaped), with an optional bold heading row
    across its columns: the lines from \\begin{tabular} to \\end{tabular}."""
    lines = [f"\\begin{{tabular}}{{{cols}}}", r"\toprule"]
    if heading is not None:
        lines += [f"\\multicolumn{{{len(text.columns)}}}{{l}}{{\\textbf{{{tex(heading)}}}}} \\\\", r"\midrule"]
    lines += [" & ".join(tex(c) for c in text.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(tex(str(v)) for v in row) + r" \\" for row in text.itertuples(index=False)]
    return lines + [r"\bottomrule", r"\end{tabular}"]


PUBLISHED_KEYS = {"experiment", "model", "params", "pairs", "nfe", "fid", "isc", "source", "reference"}
PUBLISHED_REQUIRED = {"experiment", "model", "source", "reference"}


def published_rows(path=PUBLISHED) -> pd.DataFrame:
    """The published rows our results are compared with (kdm/published.yaml), each with its source and reference."""
    rows = yaml.safe_load(Path(path).read_text())
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) - PUBLISHED_KEYS or not PUBLISHED_REQUIRED <= set(row):
            raise ValueError(f"{path}: row {i + 1} is {row!r}; expected {', '.join(sorted(PUBLISHED_REQUIRED))} "
                             "(the reference set, or unknown where the source does not say) and any of "
                             f"{sorted(PUBLISHED_KEYS)} (quote values that contain commas)")
    # every published number is an Inception FID on 50k samples (benchmarks.md)
    return pd.DataFrame(rows).assign(samples=50000, extractor="inception-v3-compat")
