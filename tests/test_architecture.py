"""The shape of the code, checked by maintained tools: layers and leaves (import-linter's contracts in
pyproject.toml), the Snakemake rules linted and formatted as the snakemake-workflows catalog's are, and one
list of dependencies for pip and conda."""
import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT

BIN = Path(sys.executable).parent


def run(*cmd):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    """CLI -> DAG -> stages -> library -> core, stages never import one another, no cycles."""
    r = run(str(BIN / "lint-imports"), "--no-cache")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Contracts: 3 kept, 0 broken." in r.stdout, r.stdout


def test_kdm_imports_only_at_the_top_of_modules():
    """An import of kdm inside a function would hide an arrow (or a cycle) from the reader: none."""
    hidden = []
    for path in sorted((ROOT / "kdm").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                for inner in ast.walk(node):
                    names = [a.name for a in inner.names] if isinstance(inner, ast.Import) else \
                        [inner.module or ""] if isinstance(inner, ast.ImportFrom) else []
                    hidden += [f"{path.relative_to(ROOT)}:{inner.lineno}" for n in names if n.split(".")[0] == "kdm"]
    assert not hidden, hidden


def test_snakemake_lint_has_nothing_to_say():
    r = run(str(BIN / "snakemake"), "--lint")
    assert r.returncode == 0 and "Congratulations" in r.stdout + r.stderr, r.stdout + r.stderr


def test_rules_are_formatted_with_snakefmt():
    r = run(str(BIN / "snakefmt"), "--check", "Snakefile", "workflow")
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_conda_env_lists_the_package_dependencies():
    """workflow/envs/kdm.yaml (snakemake --sdm conda) and pyproject.toml name the same packages."""
    pip = {re.split(r"[<>=;\[ ]", d)[0] for d in importlib.metadata.requires("kdm") if "extra ==" not in d}
    env = yaml.safe_load((ROOT / "workflow/envs/kdm.yaml").read_text())["dependencies"]
    conda = {re.split(r"[<>= ]", d)[0] for d in env if isinstance(d, str)} - {"python", "pip"}
    conda |= {re.split(r"[<>= ]", d)[0] for d in next(d["pip"] for d in env if isinstance(d, dict))}
    renamed = {"pytorch": "torch", "matplotlib-base": "matplotlib", "snakemake-minimal": "snakemake"}
    assert {renamed.get(n, n) for n in conda} == pip
