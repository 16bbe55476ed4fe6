"""A throw-away project directory (params.yaml + the generated DVC files) driven by this project's Snakefile
(snakemake -s) and by DVC (dvc init --no-scm); the tiny params (tests/params/tiny.yaml) its end-to-end runs
use; and readers of what Snakemake and DVC plan to run. The tests use it, and so does tests/overhead.py."""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from kdm import config, dag
from kdm.pairset import open_pairset

ROOT = Path(__file__).resolve().parents[1]       # the project checkout
TINY = yaml.safe_load((Path(__file__).with_name("params") / "tiny.yaml").read_text())
TINY_UNET = TINY["digits"]["teacher"]["net"]


def shipped() -> dict:
    """params.yaml, its sections unshared (YAML merge keys share them): each can be changed alone."""
    return json.loads(json.dumps(yaml.safe_load((ROOT / "params.yaml").read_text())))


def merge(base: dict, over: dict) -> dict:
    """`base` with `over` laid over it: mappings merge, other values replace (neither is changed)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def tiny(name: str, params: dict | None = None) -> dict:
    """Experiment `name` of `params` (default: the shipped ones), alone, shrunk to seconds per stage."""
    params = shipped() if params is None else params
    kind = "digits" if dag.images(params, name) else "checkerboard"
    return {"experiments": [name], name: merge(params[name], TINY[kind])}


def set_key(params: dict, dotted: str, value) -> None:
    """Set a dotted key such as 'checkerboard.kdm.lr' in place."""
    *parents, last = dotted.split(".")
    (config.section(params, ".".join(parents)) if parents else params)[last] = value


class WorkspaceError(RuntimeError):
    """A command in the workspace failed."""


class Workspace:
    def __init__(self, path: Path, params: dict):
        self.path = Path(path)
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        self.write_params(params)

    def write_params(self, params: dict, dvc_yaml: bool = True):
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        if dvc_yaml:
            self.run(sys.executable, "-m", "kdm", "dvc-yaml")

    def run(self, *cmd, check=True, timeout=600) -> subprocess.CompletedProcess:
        r = subprocess.run(cmd, cwd=self.path, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode:
            raise WorkspaceError(f"{' '.join(map(str, cmd))} exited {r.returncode} in {self.path}\n"
                                 f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
        return r

    def snakemake(self, *args, check=True):
        return self.run(sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "2", *args,
                        check=check)

    def dvc(self, *args, check=True):
        if not (self.path / ".dvc").exists():
            self.run(sys.executable, "-m", "dvc", "init", "--no-scm", "-q")
            # the project's DVC settings (hardlinked cache, so adopting outputs keeps their mtimes)
            project = (ROOT / ".dvc/config").read_text()
            if not project.startswith("[core]\n"):
                raise WorkspaceError(f"{ROOT / '.dvc/config'}: expected a [core] section first")
            (self.path / ".dvc/config").write_text(project.replace("[core]\n", "[core]\n    no_scm = True\n", 1))
        return self.run(sys.executable, "-m", "dvc", *args, check=check)

    def init_git(self):
        """Make the workspace a Git repository with DVC inside, as a project checkout is (`dvc exp` needs Git):
        the project's .gitignore (results/ stays out of Git) and DVC settings. Call before any `dvc`."""
        self.env.update(GIT_AUTHOR_NAME="kdm tests", GIT_AUTHOR_EMAIL="tests@kdm.invalid",
                        GIT_COMMITTER_NAME="kdm tests", GIT_COMMITTER_EMAIL="tests@kdm.invalid")
        self.run("git", "init", "-q")
        (self.path / ".gitignore").write_text((ROOT / ".gitignore").read_text())
        self.run(sys.executable, "-m", "dvc", "init", "-q")
        (self.path / ".dvc/config").write_text((ROOT / ".dvc/config").read_text())

    def git_commit(self, message: str):
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "-m", message)

    def stage_target(self, name: str) -> str:
        """A Snakemake target that builds the DVC stage `name` (its first output)."""
        (stage,) = [s for s in dag.stages(config.load(self.path / "params.yaml")) if s.name == name]
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


def dvc_stages(dvc_yaml: dict) -> dict[str, dict]:
    """A dvc.yaml's stages: name -> cmd, deps and outputs (outs, metrics and plots). Without the check's
    marker among the deps: it orders DVC's stages after the check (Snakemake checks at parse time) and never
    changes, so it neither makes a stage differ from its Snakemake job nor re-runs one."""
    def paths(entries):
        return [next(iter(e)) if isinstance(e, dict) else e for e in entries]
    return {name: {"cmd": s["cmd"], "deps": [d for d in paths(s.get("deps", [])) if d != dag.CHECKED],
                   "outs": paths(s.get("outs", []) + s.get("metrics", []) + s.get("plots", []))}
            for name, s in dvc_yaml["stages"].items()}


def dvc_jobs(dvc_yaml: dict) -> set[tuple]:
    """(shell command, inputs, outputs) of each stage of a dvc.yaml, as snakemake_jobs reads Snakemake's."""
    return {(s["cmd"], frozenset(s["deps"]), frozenset(s["outs"])) for s in dvc_stages(dvc_yaml).values()}


def add_store_arguments(p) -> None:
    """--params, --experiment and --store of the scripts that train checkerboard KDMs on a built store."""
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--experiment", default="checkerboard", help="an experiment with checkerboard data")
    p.add_argument("--store", help="the pair store (default: the experiment's, results/<experiment>/store/)")


def checkerboard_store(p, a) -> tuple[dict, Path, object]:
    """(params, store path, store) that add_store_arguments' arguments name; a parser error where they name no
    checkerboard experiment or no built store."""
    params = config.load(a.params)
    if a.experiment not in params or params[a.experiment]["data"]["kind"] != "checkerboard":
        p.error(f"--experiment {a.experiment}: expected an experiment of {a.params} with checkerboard data")
    store_path = Path(a.store or dag.store_dir(a.experiment))
    if not (store_path / "manifest.json").is_file():
        p.error(f"--store {store_path}: no pair store there; make it first: "
                f"snakemake --cores all {dag.store_dir(a.experiment)}")
    return params, store_path, open_pairset(store_path)
