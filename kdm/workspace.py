"""A throw-away project directory: params.yaml + the generated DVC files, driven by this project's Snakefile
(snakemake -s) and by DVC (dvc init --no-scm). The tests run end-to-end cases in one; the benchmark times
the pipeline's overhead in one."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]       # the project checkout this package is installed from


class WorkspaceError(RuntimeError):
    """A command in the workspace failed."""


class Workspace:
    def __init__(self, path: Path, params: dict):
        if not (ROOT / "Snakefile").is_file():
            raise FileNotFoundError(f"{ROOT / 'Snakefile'}: missing; a workspace needs the kdm package installed "
                                    "from its project checkout (pip install -e .)")
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
