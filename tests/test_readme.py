"""The README's commands as a reader copies them: every command of its shell blocks, and every `snakemake ...`,
`dvc ...`, `python ...` (and `pip`, `bash`, `git`) command quoted in its text, run in the order a reader meets
them, in a tiny clone of this checkout (the tracked files, tiny params), through a shell, as written: the test adds
no flag of its own. A command that fails fails the test; so does one the test cannot classify (a placeholder such
as <exp>, DIR or [--flag] is not a command). What a CPU machine cannot run is listed below by name, with why.
Then `dvc exp show` as the README gives it, after a second experiment, must fit a 120-column terminal."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workspace import ROOT, TINY, shipped, tiny

README = ROOT / "README.md"
COMMAND = re.compile(r"(snakemake|dvc|python3?|pip|bash|git)(\s|$)")
PLACEHOLDER = re.compile(r"<\w+>|(^|\s)\[|\.\.\.|(^|\s)(?!HEAD\b)[A-Z][A-Z_]+(\s|$)")   # <exp>, [--x], ..., DIR

# Steps of the quick start that CI runs on a fresh machine (.ci/run installs ".[test]", which includes the
# diffusers and slurm extras); a pip install here would point the installed package at the throw-away clone.
INSTALL = {"python3 -m venv .venv", "source .venv/bin/activate", 'pip install -e ".[test]"',
           'pip install -e ".[slurm]"'}
CI = {"python -m pytest -q": "the test command: CI runs it (.ci/run), and this test is part of it"}
TOOLS = {"snakemake", "python -m kdm"}      # the tools' names in prose, not commands
NOT_HERE = {   # what this machine cannot run, and why
    "python -m kdm profile cifar10-uncond --variants fp32,bf16,bf16+compile=blocks":
        "paper scale on a GPU (tests/test_profile.py profiles tiny experiments on the CPU)",
    "bash workflow/benchmark/gpu-profile.sh cifar10-uncond":
        "needs a GPU and EDM's CIFAR-10 network (tests/test_profile.py runs the script's CPU path)",
    "snakemake --profile profiles/slurm":
        "needs SLURM: tests/test_slurm.py runs it through a one-node cluster where sinfo answers (CI starts one)",
    "snakemake --cores all -R reference": "forces the Inception reference stage: needs a paper-scale data set and "
                                          "Inception weights (tests/test_reference.py runs it on small images)",
    "python -m kdm reference cifar10-uncond": "needs CIFAR-10 and Inception weights (tests/test_reference.py)",
    "snakemake --sdm conda": "needs conda or mamba, which this machine does not have",
    "dvc push": "needs a DVC remote; a fresh clone configures none",
    "python tests/authors_speed.py --authors-src ../KDM": "needs a checkout of the KDM authors' code, which the "
                                                          "project does not download, and what their trainer imports",
    'pip install -e ".[authors]"': "installs what only the authors' trainer needs (piq, pytorch-image-generation-"
                                   "metrics) into the environment the tests run in",
    "python tests/authors_ablation.py": "a measurement, not a check: 27 trainings of 3000 iterations at batch 1024 "
                                        "(minutes); every part of it is the training and evaluation code the "
                                        "pipeline's tests run",
}
TERMINAL = 120


def blocks_and_spans(text: str):
    """(kind, text) in reading order: ('block', language and body) of each fenced block, ('span', code) of each
    inline code span of the prose around them (wrapped spans joined, table pipes unescaped)."""
    fence = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)
    pos = 0
    for m in fence.finditer(text):
        yield from (("span", " ".join(s.replace("\\|", "|").split()))
                    for s in re.findall(r"`([^`]+)`", text[pos:m.start()]))
        yield "block", (m.group(1), m.group(2))
        pos = m.end()
    yield from (("span", " ".join(s.split())) for s in re.findall(r"`([^`]+)`", text[pos:]))


def readme_commands(text: str) -> list[str]:
    """Every command the README shows, in reading order: the lines of its bash blocks (`&&` chains split, trailing
    comments dropped) and its prose's code spans that start with a command."""
    out = []
    for kind, item in blocks_and_spans(text):
        if kind == "span":
            if COMMAND.match(item):
                out.append(item)
            continue
        lang, body = item
        if lang in ("yaml", "text"):        # params to paste, diagrams
            continue
        assert lang == "bash", f"README: a ``` block of language {lang!r}: expected bash, yaml or text\n{body}"
        for line in body.splitlines():
            line = re.sub(r"\s+#[^'\"]*$", "", line).strip()
            if line and not line.startswith("#"):
                out += [part.strip() for part in line.split(" && ")]
    return out


def classify(command: str) -> str:
    if command in INSTALL:
        return "install"
    if command in CI:
        return "ci"
    if command in TOOLS:
        return "tool"
    if command in NOT_HERE:
        return "not-here"
    if PLACEHOLDER.search(command):
        return "unclassified"
    return "run"


def test_every_readme_command_is_classified_and_every_exception_is_in_the_readme():
    commands = readme_commands(README.read_text())
    unclassified = [c for c in commands if classify(c) == "unclassified"]
    assert not unclassified, f"README commands that cannot run as written (placeholders): {unclassified}"
    stale = (set(NOT_HERE) | set(CI) | INSTALL) - set(commands)
    assert not stale, f"listed here but no longer in the README: {stale}"
    assert len(NOT_HERE) <= 10 and sum(classify(c) == "run" for c in commands) >= 40


def test_commands_are_read_from_blocks_spans_and_tables_in_order():
    text = ("Run `snakemake --cores all` first, then\n```bash\nfoo=1\ndvc repro   # again\n# a comment\n"
            "a && pip install -e '.[x]'\n```\n| `dvc metrics diff` | `python -m kdm\nverify board` |\n  ```yaml\n"
            "  dvc: 1\n  ```\nand `dvc.yaml`, `--json`, `snakemake` and `git log -n 1`.\n")
    assert readme_commands(text) == ["snakemake --cores all", "foo=1", "dvc repro", "a", "pip install -e '.[x]'",
                                     "dvc metrics diff", "python -m kdm verify board", "snakemake", "git log -n 1"]
    assert [classify(c) for c in ("snakemake", "dvc push", "python -m kdm verify <exp>", "kdm export X DIR",
                                  "dvc plots diff [revs]", "snakemake --cores all")] == \
        ["tool", "not-here", "unclassified", "unclassified", "unclassified", "run"]


def tiny_clone(path: Path) -> dict:
    """What a fresh clone of this checkout holds (its tracked files, and new ones Git does not ignore), with the
    embedded experiments shrunk to seconds (checkerboard and digits: the ones the README's commands name), a
    tiny benchmark and a tiny sweep, committed. Returns the environment a reader's shell has: the venv's tools first."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, path / rel)
    params = shipped()
    params = {"benchmark": TINY["benchmark"], "sweeps": TINY["sweeps"], "experiments": ["checkerboard", "digits"],
              **{exp: tiny(exp, params)[exp] for exp in ("checkerboard", "digits")}}
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "kdm tests", "GIT_AUTHOR_EMAIL": "tests@kdm.invalid",
           "GIT_COMMITTER_NAME": "kdm tests", "GIT_COMMITTER_EMAIL": "tests@kdm.invalid"}
    for cmd in (f"{sys.executable} -m kdm dvc-yaml", "git init -q", "git add -A", "git commit -q -m clone"):
        subprocess.run(cmd.split(), cwd=path, env=env, check=True, capture_output=True)
    return env


def shell(command: str, cwd: Path, env: dict, timeout=900) -> subprocess.CompletedProcess:
    """A command as a reader's terminal runs it (bash; a pipe fails where any of its commands fails)."""
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    """The tiny clone after every runnable README command, in order (each failure recorded, the rest still run)."""
    path = tmp_path_factory.mktemp("clone")
    env = tiny_clone(path)
    ran, failed = [], []
    for command in readme_commands(README.read_text()):
        if classify(command) != "run":
            continue
        t0 = time.monotonic()
        r = shell(command, path, env)
        ran.append((command, r.returncode, round(time.monotonic() - t0, 1)))
        if r.returncode:
            failed.append(f"`{command}` exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    (path / "readme-commands.json").write_text(json.dumps(ran, indent=1))      # what ran, its exit code, seconds
    return dict(path=path, env=env, ran=ran, failed="\n\n".join(failed) or None)


@pytest.mark.e2e
def test_readme_commands_run_as_written(reader):
    assert reader["failed"] is None, reader["failed"]
    ran = [c for c, _, _ in reader["ran"]]
    for command in ("snakemake --report results/report.html", "snakemake --unlock", "snakemake --summary",
                    "dvc exp run -S 'digits.kdm.lr=0.001'", "snakemake --cores all benchmark"):
        assert command in ran
    path = reader["path"]
    assert (path / "results/dag.svg").read_text().lstrip().startswith("<?xml")
    assert (path / "results/report.html").stat().st_size > 100_000
    assert len(list((path / "results/export/digits-kdm").glob("*.png"))) == 1000
    overhead = pd.read_csv(path / "results/overhead.csv")       # tests/overhead.py: every step timed
    assert len(overhead) == 6 and (overhead["seconds"] > 0).all()
    assert overhead["jobs"].iloc[-1] > overhead["jobs"].iloc[0]


@pytest.mark.e2e
def test_exp_show_as_the_readme_gives_it_fits_a_terminal(reader):
    """After a second experiment: the README's `dvc exp show` at 120 columns holds, unelided, every experiment's
    KDM and KD FID of the experiment studied and the param that changed, with the values `--json` gives."""
    assert reader["failed"] is None, reader["failed"]
    path, env = reader["path"], reader["env"]
    assert shell("dvc exp run -S 'digits.kdm.lr=0.004'", path, env).returncode == 0
    (show,) = [c for c in readme_commands(README.read_text()) if c.startswith("dvc exp show --only-changed")]
    r = shell(show, path, {**env, "COLUMNS": str(TERMINAL)})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.rstrip("\n").splitlines()
    assert max(map(len, lines)) <= TERMINAL and "…" not in r.stdout, r.stdout
    header = lines[1].split()
    assert header[:2] == ["Experiment", "Created"] and \
        {"digits.kdm.fid", "digits.kd.fid", "digits.kdm.lr"} <= set(header), r.stdout

    rows = json.loads(shell("dvc exp show --json", path, env).stdout)
    expected = {}
    for rev in rows:
        exps = [(rev["name"] or rev["rev"], rev["data"])] + \
            [(e["name"], e["revs"][0]["data"]) for e in rev.get("experiments") or []]
        for name, data in exps:
            fid = data["metrics"]["results/table.json"]["data"]["digits"]
            lr = data["params"]["params.yaml"]["data"]["digits"]["kdm"]["lr"]
            expected[name] = [f"{fid['kdm']['fid']:.5g}", f"{fid['kd']['fid']:.5g}", f"{lr:g}"]
    cols = [header.index(c) for c in ("digits.kdm.fid", "digits.kd.fid", "digits.kdm.lr")]
    shown = {}
    for line in lines[3:]:
        if line.strip().startswith("─"):
            continue
        name = re.search(r"\[([^\]]+)\]|^\s*(\S+)", line)
        cells = re.split(r"\s{2,}", line.strip())
        shown[name.group(1) or name.group(2)] = [cells[i] for i in cols]
    assert len(shown) == 4 and all(shown[n] == expected[n] for n in shown if n in expected), (shown, expected)
    assert {shown[n][2] for n in shown} == {"0.002", "0.001", "0.004"}
