"""Rerun equivalence: change any one params key, and Snakemake and DVC plan to re-run the same stages.

One workspace holds every kind of stage: a 2-D experiment and a digits experiment with sampled pairs, and a
digits experiment whose pairs are imported (no shards: the store imports them). It is built once with fake
stages (a `python` first on PATH that writes the outputs dvc.yaml declares): what is tested is which jobs
the two tools plan, not what the jobs compute (tests/test_e2e.py runs them for real). Both tools plan in this
process: as subprocesses they cost ~1.5 s each, and there are ~260 keys.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kdm import dag

from conftest import ROOT, tiny_digits, tiny_params
from workspace import Workspace, dvc_stages

pytestmark = pytest.mark.e2e

# a stage that writes the outputs dvc.yaml declares for its command (paths without a suffix are directories)
FAKE_PYTHON = """#!{python}
import os, pathlib, sys, yaml
if sys.argv[1:3] != ["-m", "kdm"] or sys.argv[3:4] == ["dvc-yaml"]:
    os.execv({python!r}, [{python!r}] + sys.argv[1:])
cmd = "python " + " ".join(sys.argv[1:])
files = [f for f in ("dvc.yaml", "workflow/sweeps/dvc.yaml") if os.path.exists(f)]
(stage,) = [s for f in files for s in yaml.safe_load(open(f))["stages"].values() if s["cmd"] == cmd]
for entry in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
    path = pathlib.Path(next(iter(entry)) if isinstance(entry, dict) else entry)
    if not path.suffix:
        path.mkdir(parents=True, exist_ok=True)
        path = path / "data"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cmd)
"""

# values tried for a string key after value + "-changed" (a free string such as a path), in order
STRINGS = ("constant", "cosine", "l2", "pseudo_huber", "decomposed", "dense", "target", "none", "unit_circle",
           "kdm-npz", "get", "teacher", "import", "mlp", "unet", "songunet", "digits", "checkerboard", "images",
           "classifier", "inception-v3-compat")


def all_params(tmp: Path) -> dict:
    """The tiny 2-D and conditional digits experiments, the digits experiment with imported pairs, and a sweep
    (outside the default run: the plans below are of both)."""
    params = tiny_params()
    for name in ("digits-cond", "digits"):
        params[name] = tiny_digits(name)[name]
        params["experiments"].append(name)
    for section in ("teacher", "kdm", "kd"):      # the default, made a key: more GPUs start torchrun instead
        params["checkerboard"][section]["gpus"] = 1
    exp = params["digits"]                        # the store imports it (no stage reads the files here)
    for name in ("get", "get-changed"):           # its folder, as named and as the key's change names it
        (tmp / name).mkdir()
    exp.pop("rederive", None)                  # imported pairs record no teacher to re-sample
    exp["pairs"] = {"source": "import", "format": "get", "path": str(tmp / "get"),
                    "sigma_max": exp["sampler"]["sigma_max"],
                    "options": {"seed_start": 0, "batch": 64, "world_size": 1}}
    params["sweeps"] = {"budget": {"experiment": "checkerboard", "students": ["kdm", "kd"], "mode": "grid",
                                   "axes": {"pairs_used": [128, 512]}, "seeds": [0]}}
    return params


def leaves(node: dict, path=()):
    """Paths of the leaf keys (a list is one leaf)."""
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, path + (key,))
        else:
            yield path + (key,)


def candidates(value):
    """Changed values of the same type, most natural first."""
    if isinstance(value, bool):
        yield not value
    elif isinstance(value, int):
        yield from (value + 1, value * 2, value // 2, value - 1)
    elif isinstance(value, float):
        yield from (value * 2, value / 2, value + 1, value + 0.5, value - 1)
    elif isinstance(value, str):
        yield value + "-changed"
        yield from STRINGS
    elif isinstance(value, list):
        numbers = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if numbers or not value:                # e.g. train_seeds: one more seed, a bigger DAG
            yield value + [max(numbers, default=0) + 1]
        if len(value) > 1:                      # e.g. experiments: one fewer
            yield value[:-1]
        for new in candidates(value[0]) if value else ():
            yield [new] + value[1:]


def changed(params: dict, path: tuple):
    """(params with the key at `path` changed to its first candidate that validates, the value), or
    (None, why there is none)."""
    from kdm.config import validate
    first_error = None
    for value in candidates(_at(params, path)):
        new = copy.deepcopy(params)
        _at(new, path[:-1])[path[-1]] = value
        if new == params:
            continue
        try:
            validate(new)
        except ValueError as e:
            first_error = first_error or f"{value!r}: {e}"
            continue
        return new, value
    return None, f"no single-key change validates; first tried {first_error[:200]}"


def _at(node, path):
    for key in path:
        node = node[key]
    return node


TARGETS = ("all", "sweeps")        # Snakemake's; DVC's: dvc.yaml and the sweeps' file


def stages(ws_path: Path) -> dict[str, dict]:
    """The workspace's DVC stages (dvc.yaml's and the sweeps'): name -> cmd, deps and outputs."""
    out = {}
    for path in ("dvc.yaml", dag.SWEEPS_DVC):
        if (ws_path / path).is_file():
            out |= dvc_stages(yaml.safe_load((ws_path / path).read_text()))
    return out


def named(cmds: set[str], names: dict[str, str]):
    """Stage names of commands, for the report."""
    return sorted(names.get(c, c) for c in cmds) or "nothing"


def dvc_yaml(ws_path: Path):
    """`python -m kdm dvc-yaml`, run in this process (a subprocess costs 0.4 s a key)."""
    from kdm.__main__ import main
    with pytest.MonkeyPatch.context() as m:
        m.chdir(ws_path)
        code = main(["dvc-yaml"])
    assert code == 0, f"python -m kdm dvc-yaml exited {code}"


def snakemake_plan(ws_path: Path) -> set[str]:
    """The shell commands of the jobs `snakemake -n` would run (each is a DVC stage's cmd)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import DAGSettings, OutputSettings, Quietness, ResourceSettings
    # quiet about rules and progress: the dry run returns once it has the DAG of jobs to run
    settings = OutputSettings(dryrun=True, quiet={Quietness.RULES, Quietness.PROGRESS}, enable_file_logging=False)
    log = io.StringIO()                         # its banner, 20 lines a key: shown only when it fails
    try:
        with contextlib.redirect_stderr(log), SnakemakeApi(settings) as api:
            workflow = api.workflow(ResourceSettings(cores=2), snakefile=ROOT / "Snakefile", workdir=ws_path)
            workflow.dag(DAGSettings(targets=set(TARGETS))).execute_workflow(executor="dryrun")
            jobs = workflow._workflow.dag.needrun_jobs(exclude_finished=False)
            return {job.shellcmd.strip() for job in jobs if job.shellcmd}
    except Exception as e:
        raise RuntimeError(f"snakemake -n failed: {e}\n{log.getvalue()[-2000:]}") from e


def dvc_plan(ws_path: Path) -> set[str]:
    """The commands `dvc repro` would run: the stages `dvc status` names, and every stage downstream of them
    (status names a stage only once its own deps have changed; repro then runs the next ones too)."""
    from dvc.repo import Repo
    with Repo(str(ws_path)) as repo:
        plan = {name.rsplit(":", 1)[-1] for name in repo.status()}
    dag = stages(ws_path)
    while True:
        made = [o for name in plan for o in dag[name]["outs"]]
        more = {name for name, s in dag.items() if name not in plan and any(
            d == o or d.startswith(o + "/") or o.startswith(d + "/") for d in s["deps"] for o in made)}
        if not more:
            return {dag[name]["cmd"] for name in plan}
        plan |= more


@contextlib.contextmanager
def faster_tools():
    """Speed only (a key took ~1 s, mostly YAML parsed in pure Python): PyYAML's C parser for Snakemake and
    kdm.config; DVC's params.yaml, dvc.yaml and dvc.lock each parsed once (DVC re-reads params.yaml per stage);
    no DVC read/write locks (nothing else uses the workspace). A patch whose target has moved is left out.
    Snakemake's log records stay out of pytest's captured log (a dozen lines per key)."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(logging.getLogger("snakemake.logging"), "propagate", False)
        for loader in ("SafeLoader", "FullLoader"):         # kdm.config; Snakemake's config file (yte)
            if hasattr(yaml, "C" + loader):
                m.setattr(yaml, loader, getattr(yaml, "C" + loader))
        try:
            from dvc import rwlock
            from dvc.utils import strictyaml
            from dvc.utils.serialize import _yaml
            parse = _yaml.parse_yaml
        except (ImportError, AttributeError):
            yield
            return
        cache = {}

        def cached(text, path, typ="safe"):
            if typ != "safe":
                return parse(text, path, typ=typ)
            if text not in cache:
                cache[text] = parse(text, path, typ=typ)
            return copy.deepcopy(cache[text])

        m.setattr(_yaml, "parse_yaml", cached)
        m.setattr(strictyaml, "parse_yaml", cached, raising=False)
        m.setattr(rwlock, "rwlock", lambda *args, **kwargs: contextlib.nullcontext(), raising=False)
        yield


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The workspace, built by Snakemake with fake stages, its outputs then adopted by DVC."""
    tmp = tmp_path_factory.mktemp("rerun")
    (tmp / "ws").mkdir()
    (tmp / "bin").mkdir()
    (tmp / "bin" / "python").write_text(FAKE_PYTHON.format(python=sys.executable))
    (tmp / "bin" / "python").chmod(0o755)
    params = all_params(tmp)
    ws = Workspace(tmp / "ws", params)
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "2", *TARGETS],
                       cwd=ws.path, capture_output=True, text=True,
                       env={**os.environ, "PATH": f"{tmp / 'bin'}{os.pathsep}{os.environ['PATH']}"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ws.dvc("commit", "-f")
    with faster_tools():
        assert snakemake_plan(ws.path) == set() and dvc_plan(ws.path) == set(), "not up to date once built"
        yield ws, params


def test_changing_one_key_reruns_the_same_stages_under_snakemake_and_dvc(built):
    ws, params = built
    built_state = {f: (ws.path / f).read_text() for f in ("params.yaml", "dvc.yaml", dag.SWEEPS_DVC)}
    start, checked, skipped, failures = time.monotonic(), [], {}, []
    for path in leaves(params):
        key = ".".join(path)
        new, value = changed(params, path)
        if new is None:
            skipped[key] = value
            continue
        checked.append(key)
        try:
            ws.write_params(new, dvc_yaml=False)
            dvc_yaml(ws.path)
            smk, dvc = snakemake_plan(ws.path), dvc_plan(ws.path)
            names = {s["cmd"]: name for name, s in stages(ws.path).items()}
        except Exception as e:                  # e.g. the Snakefile refuses params that validate: report, go on
            failures.append(f"{key} = {value!r}: {type(e).__name__}: {str(e)[-500:]}")
            continue
        finally:                                # back to the built state for the next key
            for f, text in built_state.items():
                (ws.path / f).write_text(text)
        # both re-check params.yaml after any change; what else re-runs is the key's own
        if smk != dvc or smk - {dag.check().cmd} == set() or dag.check().cmd not in smk:
            failures.append(f"{key} = {value!r}: Snakemake runs {named(smk, names)}, DVC runs {named(dvc, names)}" + (
                f"\n    only Snakemake: {named(smk - dvc, names)}; only DVC: {named(dvc - smk, names)}"
                if smk != dvc else " (neither tool tracks the key, or params.yaml is not re-checked)"))
    assert snakemake_plan(ws.path) == set() and dvc_plan(ws.path) == set(), "the built state was not restored"
    summary = (f"{len(checked)} keys checked, {len(skipped)} skipped, in {time.monotonic() - start:.0f} s"
               + "".join(f"\n  skipped {k}: {why}" for k, why in skipped.items()))
    print(summary)
    assert len(checked) > 200, summary
    assert not failures, f"{len(failures)} keys re-run different stages:\n" + "\n".join(failures) + "\n" + summary
