"""The pipeline's own overhead, outside the DAG: in a throw-away workspace holding a tiny copy of a shipped
experiment (tests/params/tiny.yaml), a full tiny run, a no-op `snakemake`, `dvc commit` adoption, a no-op
`dvc repro`, and the dry runs of both tools with many pair shards. Writes <out>.csv and <out>.md.

    python tests/overhead.py [--experiment checkerboard] [--shards 64] [--out results/overhead]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))      # run as a script: the tests' workspace module beside it
from workspace import Workspace, shipped, tiny  # noqa: E402

from kdm import dag  # noqa: E402
from kdm.io import atomic_path  # noqa: E402


def _timed(call, *args) -> float:
    t0 = time.perf_counter()
    call(*args)
    return time.perf_counter() - t0


def measure(exp: str, shards: int, scratch: Path) -> pd.DataFrame:
    params = tiny(exp)
    ws = Workspace(scratch, params)
    rows = []

    def row(action, seconds):
        rows.append({"action": action, "jobs": len(dag.stages(params)), "seconds": seconds})
        print(f"{action} ({rows[-1]['jobs']} jobs): {seconds:.2f} s", file=sys.stderr)

    row("snakemake: the tiny pipeline, every job run", _timed(ws.snakemake))
    row("snakemake: no-op (everything up to date)", _timed(ws.snakemake))
    row("dvc commit -f: adopt Snakemake's outputs", _timed(ws.dvc, "commit", "-f", "-q"))
    row("dvc repro: no-op (everything up to date)", _timed(ws.dvc, "repro"))
    params[exp]["pairs"].update(shards=shards, count=shards * params[exp]["pairs"]["batch"])
    ws.write_params(params)
    row(f"snakemake -n: dry run, {shards} shards", _timed(ws.snakemake, "-n"))
    # (`dvc repro --dry` hashes every dep and so stops at the first missing shard: `dvc status` is DVC's plan)
    row(f"dvc status: what would run, {shards} shards", _timed(ws.dvc, "status"))
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="checkerboard", help="a shipped experiment (default: checkerboard)")
    p.add_argument("--shards", type=int, default=64, help="pair shards in the dry runs (default: 64)")
    p.add_argument("--out", default="results/overhead", help="writes OUT.csv and OUT.md")
    a = p.parse_args(argv)
    if a.experiment not in shipped() or shipped()[a.experiment]["data"]["kind"] not in ("checkerboard", "digits"):
        p.error(f"--experiment {a.experiment}: expected a shipped embedded experiment (checkerboard or digits data)")
    with tempfile.TemporaryDirectory(prefix="kdm-overhead-") as tmp:
        table = measure(a.experiment, a.shards, Path(tmp))
    out = Path(a.out)
    with atomic_path(out.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(f"# Pipeline overhead on a tiny {a.experiment} workspace\n\n"
                       + table.to_markdown(index=False, floatfmt=".3g") + "\n")


if __name__ == "__main__":
    main()
