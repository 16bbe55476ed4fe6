"""The end-to-end tests' workspace (kdm.workspace) and readers of what Snakemake and DVC plan to run."""
from __future__ import annotations

import re

import kdm.workspace


class Workspace(kdm.workspace.Workspace):
    """kdm.workspace.Workspace plus what tests ask of it."""

    def stage_target(self, name: str) -> str:
        """A Snakemake target that builds the DVC stage `name` (its first output)."""
        import kdm.config
        from kdm import dag
        (stage,) = [s for s in dag.stages(kdm.config.load(self.path / "params.yaml")) if s.name == name]
        return stage.outputs[0].rstrip("/")

    def outputs(self) -> dict[str, int]:
        """mtime (ns) of every file under results/."""
        return {str(p.relative_to(self.path)): p.stat().st_mtime_ns
                for p in sorted((self.path / "results").rglob("*")) if p.is_file()}


def snakemake_jobs(dry_run_output: str) -> set[tuple]:
    """(shell command, inputs, outputs) of each job in `snakemake -n -p` output."""
    jobs = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run_output):
        m = re.search(r"^Shell command: (.+)$", block, re.M)
        if not m or m.group(1).strip() == "None":      # `rule all` runs nothing
            continue
        field = lambda name: frozenset(re.search(rf"^\s+{name}: (.+)$", block, re.M).group(1).split(", ")) \
            if re.search(rf"^\s+{name}: ", block, re.M) else frozenset()
        jobs.add((m.group(1).strip(), field("input"), field("output")))
    return jobs


def dvc_jobs(dvc_yaml: dict) -> set[tuple]:
    def paths(entries):
        return frozenset(next(iter(e)) if isinstance(e, dict) else e for e in entries)
    return {(s["cmd"], paths(s.get("deps", [])),
             paths(s.get("outs", []) + s.get("metrics", []) + s.get("plots", [])))
            for s in dvc_yaml["stages"].values()}
