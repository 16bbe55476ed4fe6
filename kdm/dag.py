"""The pipeline's DAG, defined once.

Every stage is a `Stage`: its command, its files by name (`stage.deps.teacher`, `stage.outs.model`) and the
params sections it reads. dvc.yaml is generated from these by `dvc_files()` (`python -m kdm dvc-yaml`); the
Snakemake rules (workflow/rules/*.smk) write the same files under the same names as plain patterns, and
tests/test_dag.py and tests/test_rerun.py check that both tools plan, and re-run, the same stages. The CLI
runs a stage only as it is defined here, so a stage can only read the params it declares and only write the
outputs it declares.

Paths ending in "/" are directory outputs.

Image experiments add stages for their evaluator: with the offline classifier, `classifier` (trained on the
real images) and `evaluate data` (the evaluator's floor on real images); with Inception, `reference` (the
real images' feature statistics FID is measured against). Their evaluations depend on these. Imported pair
sets have no pair shards: the store stage imports them. A stage's outputs never depend on the data kind,
only its deps do, so a Snakemake rule serves every kind with one output pattern.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kdm.config import (IMAGE_KINDS, STUDENTS, active_sweeps, imported, point_settings, section, sweep_points,
                        sweep_students, with_settings)


class Files(dict):
    """A stage's files by name (name -> path, or a list of paths for a group such as a store's shards):
    stages read `stage.deps.teacher`, `stage.outs.model`; Snakemake's rules use the same names."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no file named {name!r}; this stage has {sorted(self)}") from None

    def paths(self) -> tuple[str, ...]:
        """Every path, groups flattened, in order."""
        return tuple(p for v in self.values() for p in ([v] if isinstance(v, str) else v))


@dataclass(frozen=True)
class Stage:
    name: str                                  # DVC stage name
    cmd: str
    deps: Files
    outs: Files                                # cached outputs
    params: tuple[str, ...]                    # dotted params.yaml keys the stage reads
    log: str
    metrics: Files = field(default_factory=Files)   # JSON metrics (outputs, not cached by DVC)
    plots: Files = field(default_factory=Files)     # CSV / PNG plots (outputs, not cached by DVC)
    scratch: str = ""                          # resumable partial work (not an output; kept across kills)
    persist: bool = False                      # DVC leaves the outs in place while the command runs
    overrides: tuple = ()                      # (dotted key, value): a sweep point's params over params.yaml's
    args: dict = field(default_factory=dict, compare=False)  # the wildcard values

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.outs.paths() + self.metrics.paths() + self.plots.paths()

    @property
    def scratch_path(self) -> Path | None:
        """Where the stage keeps resumable progress; None when it has no such place (never the cwd)."""
        return Path(self.scratch) if self.scratch else None


CHECKED = "results/params.checked"


def check():
    """`python -m kdm check`: params.yaml and the files it names, checked before any stage that reads them
    runs. DVC removes a stage's outputs before running its command; every stage without another stage
    upstream depends on the check's marker file, so DVC runs the check first and stops there on bad params.
    The marker's bytes never change (it persists, and is written only after a passing check), so a re-check
    re-runs nothing downstream. Snakemake checks at parse time, before any job: its rules do not depend on
    the marker, which its `check` rule writes only so that DVC can adopt its results."""
    return Stage(name="check", cmd="python -m kdm check", deps=Files(params="params.yaml"),
                 outs=Files(checked=CHECKED), params=(), log="logs/check.log", persist=True)


def _run_dir(exp, run):
    return f"results/{exp}/{run}"


def student_run(model, seed):
    return f"{model}-s{seed}"


def model_files(exp, run):
    """What a training stage writes: weights + resolved config, its loss log and curve; and where it
    keeps its checkpoint while it runs."""
    d = _run_dir(exp, run)
    return dict(outs=Files(model=f"{d}/model.pt", config=f"{d}/config.json"),
                plots=Files(losses=f"{d}/train.csv", loss_curve=f"{d}/loss.png"), scratch=f"{d}/checkpoint.pt")


def images(params, exp) -> bool:
    """Whether `exp` is an image experiment (False for a wildcard pattern such as "{exp}")."""
    return params.get(exp, {}).get("data", {}).get("kind") in IMAGE_KINDS


def has_classifier(params, exp) -> bool:
    """Whether the image experiment `exp` is evaluated with its own classifier (else with Inception)."""
    return images(params, exp) and params[exp]["evaluate"]["extractor"]["kind"] == "classifier"


def shard_count(params, exp) -> int:
    """How many pair-shard stages `exp` has: none when its pairs are imported."""
    pairs = params[exp]["pairs"]
    return 0 if imported(pairs) else pairs["shards"]


def classifier(exp):
    files = model_files(exp, "classifier")
    return Stage(name=f"{exp}-classifier", cmd=f"python -m kdm classifier {exp}", deps=Files(checked=CHECKED),
                 params=(f"{exp}.data", f"{exp}.classifier"), log=f"logs/{exp}/classifier.log",
                 metrics=Files(metrics=f"results/{exp}/classifier/metrics.json"), args=dict(exp=exp), **files)


def reference(exp):
    return Stage(name=f"{exp}-reference", cmd=f"python -m kdm reference {exp}", deps=Files(checked=CHECKED),
                 outs=Files(stats=f"results/{exp}/reference/stats.npz"),
                 params=(f"{exp}.data", f"{exp}.evaluate.extractor"), log=f"logs/{exp}/reference.log",
                 args=dict(exp=exp))


def evaluator_deps(params, exp) -> Files:
    """What an evaluation reads besides its model: for images, the classifier and its held-out accuracy, or
    the Inception reference statistics (kdm.metrics.Quality reads them by name)."""
    if not images(params, exp):
        return Files()
    if not has_classifier(params, exp):
        return Files(reference=reference(exp).outs.stats)
    c = classifier(exp)
    return Files(classifier=c.outs.model, classifier_metrics=c.metrics.metrics)


def gpus(params, exp, section) -> int:
    """The GPUs (training processes) of a training stage: `<exp>.<section>.gpus`, default 1."""
    return params[exp][section].get("gpus", 1)


def launch(gpus: int) -> str:
    """How a training stage starts: one process, or torchrun with one process per GPU (DDP, kdm.training)."""
    return "python -m kdm" if gpus == 1 else f"torchrun --standalone --nproc_per_node {gpus} -m kdm"


def teacher(exp, gpus=1):
    return Stage(name=f"{exp}-teacher", cmd=f"{launch(gpus)} teacher {exp}", deps=Files(checked=CHECKED),
                 params=(f"{exp}.data", f"{exp}.teacher"), log=f"logs/{exp}/teacher.log",
                 args=dict(exp=exp), **model_files(exp, "teacher"))


def teacher_pt(exp):
    return model_files(exp, "teacher")["outs"].model


def shard_dir(exp, shard):
    return f"results/{exp}/pairs/shard-{shard}/"


def pairs(exp, shard):
    return Stage(name=f"{exp}-pairs-{shard}", cmd=f"python -m kdm pairs {exp} {shard}",
                 deps=Files(teacher=teacher_pt(exp)), outs=Files(shard=shard_dir(exp, shard)),
                 params=(f"{exp}.sampler", f"{exp}.pairs"), log=f"logs/{exp}/pairs-{shard}.log",
                 scratch=f"results/{exp}/pairs/.shard-{shard}.partial/", args=dict(exp=exp, shard=shard))


def store_dir(exp):
    return f"results/{exp}/store/"


def store(exp, shards):
    # the teacher and the sampler/pairs params are read to check that every shard (or the import) matches them
    return Stage(name=f"{exp}-store", cmd=f"python -m kdm store {exp}",
                 deps=Files(shards=[shard_dir(exp, i) for i in range(shards)], teacher=teacher_pt(exp)),
                 outs=Files(store=store_dir(exp)), params=(f"{exp}.sampler", f"{exp}.pairs"),
                 log=f"logs/{exp}/store.log", args=dict(exp=exp))


def rederive(exp):
    """Re-sampling some of the store's seeds with the teacher it recorded (params `rederive`): a check that runs
    after every build of the store. Nothing downstream reads it; the default target asks for it."""
    return Stage(name=f"{exp}-rederive", cmd=f"python -m kdm rederive {exp}",
                 deps=Files(store=store_dir(exp), teacher=teacher_pt(exp)), outs=Files(),
                 metrics=Files(report=f"results/{exp}/rederive.json"), params=(f"{exp}.rederive",),
                 log=f"logs/{exp}/rederive.log", args=dict(exp=exp))


def rederives(params, exp):
    """The re-derivation stage of `exp`: none without a `rederive` section (which imported pairs may not have: the
    params check refuses it)."""
    return [rederive(exp)] if "rederive" in params[exp] else []


def snapshot_dir(exp, run):
    """A student's EMA snapshots (kdm.training): <iteration>.pt files and index.json, which lists them (none when
    snapshots.every is 0)."""
    return f"{_run_dir(exp, run)}/snapshots/"


def train(exp, model, seed, gpus=1, point: Point | None = None):
    """A student's training; a sweep point's (`point`) trains as the experiment's students do, with the point's
    params over the student's section, into the point's folder."""
    run = student_run(model, seed) if point is None else point.run(model, seed)
    files = model_files(exp, run)
    files["outs"]["snapshots"] = snapshot_dir(exp, run)
    if model == "kdm":      # every KDM run also draws the spectrum of its operator
        files["plots"]["spectrum"] = f"{_run_dir(exp, run)}/spectrum.png"
    name, cmd = f"{exp}-train-{student_run(model, seed)}", f"{launch(gpus)} train {exp} {model} {seed}"
    return Stage(name=name if point is None else point.stage_name(name), cmd=cmd if point is None else point.cmd(cmd),
                 deps=Files(store=store_dir(exp)), params=(f"{exp}.{model}", f"{exp}.snapshots.every"),
                 log=f"logs/{exp}/train-{run}.log", args=dict(exp=exp, model=model, seed=seed),
                 overrides=() if point is None else point.overrides(model), **files)


def eval_dir(exp, run):
    return f"results/{exp}/eval/{run}"


def evaluate_teacher(params, exp):
    d = eval_dir(exp, "teacher")
    return Stage(name=f"{exp}-evaluate-teacher", cmd=f"python -m kdm evaluate {exp} teacher",
                 deps=Files(teacher=teacher_pt(exp), **evaluator_deps(params, exp)),
                 outs=Files(samples=f"{d}/samples/"), params=(f"{exp}.data", f"{exp}.sampler", f"{exp}.evaluate"),
                 log=f"logs/{exp}/evaluate-teacher.log", metrics=Files(metrics=f"{d}/metrics.json"),
                 plots=Files(grid=f"{d}/samples.png"), args=dict(exp=exp, model="teacher"))


def evaluate_student(params, exp, model, seed, point: Point | None = None):
    run = student_run(model, seed) if point is None else point.run(model, seed)
    d = eval_dir(exp, run)
    trained = model_files(exp, run)["outs"]
    name, cmd = f"{exp}-evaluate-{student_run(model, seed)}", f"python -m kdm evaluate {exp} {model} {seed}"
    # the teacher is timed again beside the student (the speedup is measured in one process)
    return Stage(name=name if point is None else point.stage_name(name), cmd=cmd if point is None else point.cmd(cmd),
                 deps=Files(model=trained.model, config=trained.config,
                            teacher_samples=evaluate_teacher(params, exp).outs.samples, teacher=teacher_pt(exp),
                            **evaluator_deps(params, exp)), outs=Files(),
                 params=(f"{exp}.data", f"{exp}.sampler", f"{exp}.evaluate", f"{exp}.analysis"),
                 log=f"logs/{exp}/evaluate-{run}.log", metrics=Files(metrics=f"{d}/metrics.json"),
                 plots=Files(grid=f"{d}/samples.png", analysis=f"{d}/analysis.png", latent=f"{d}/latent.png"),
                 args=dict(exp=exp, model=model, seed=seed))


def curve(params, exp, model, seed):
    """A student's EMA snapshots (snapshots.every) measured on the first snapshots.samples of the teacher's
    evaluation samples: quality against iterations, a curve to look at; the table reports the final model."""
    run = student_run(model, seed)
    d = eval_dir(exp, run)
    trained = model_files(exp, run)["outs"]
    return Stage(name=f"{exp}-curve-{run}", cmd=f"python -m kdm curve {exp} {model} {seed}",
                 deps=Files(model=trained.model, snapshots=snapshot_dir(exp, run),
                            teacher_samples=evaluate_teacher(params, exp).outs.samples, **evaluator_deps(params, exp)),
                 outs=Files(), params=(f"{exp}.data", f"{exp}.evaluate", f"{exp}.snapshots"),
                 log=f"logs/{exp}/curve-{run}.log",
                 plots=Files(csv=f"{d}/curve.csv", png=f"{d}/curve.png"), args=dict(exp=exp, model=model, seed=seed))


def curves(params, exp):
    """The curve stages of `exp`: none unless its students take snapshots."""
    if not params[exp]["snapshots"]["every"]:
        return []
    return [curve(params, exp, m, s) for m in STUDENTS for s in params[exp]["train_seeds"]]


def evaluate_data(params, exp):
    """The evaluator's floor on real images: resampled real data, and two disjoint halves."""
    resampled, halves = eval_dir(exp, "data-resampled"), eval_dir(exp, "data-halves")
    return Stage(name=f"{exp}-evaluate-data", cmd=f"python -m kdm evaluate {exp} data",
                 deps=evaluator_deps(params, exp), outs=Files(), params=(f"{exp}.data", f"{exp}.evaluate"),
                 log=f"logs/{exp}/evaluate-data.log",
                 metrics=Files(resampled=f"{resampled}/metrics.json", halves=f"{halves}/metrics.json"),
                 plots=Files(grid=f"{resampled}/samples.png"), args=dict(exp=exp, model="data"))


def evaluations(params, exp):
    if has_classifier(params, exp):
        yield evaluate_data(params, exp)
    yield evaluate_teacher(params, exp)
    for model in STUDENTS:
        for seed in params[exp]["train_seeds"]:
            yield evaluate_student(params, exp, model, seed)


def table(params):
    metrics = [m for exp in params["experiments"] for s in evaluations(params, exp) for m in s.metrics.paths()]
    return Stage(name="table", cmd="python -m kdm table", deps=Files(metrics=metrics),
                 outs=Files(csv="results/table.csv", md="results/table.md", html="results/table.html",
                            tex="results/table.tex"),
                 metrics=Files(summary="results/table.json"),
                 plots=Files(quality_vs_speed="results/quality-vs-speed.png"), params=("experiments",),
                 log="logs/table.log")


BENCHMARK_DVC = "workflow/benchmark/dvc.yaml"     # apart from dvc.yaml: a plain `dvc repro` does not run it


def benchmark(params):
    """Speed, memory and scale (kdm/stages/benchmark.py), on the first training seed of each image
    experiment (`args["experiments"]`: experiment -> seed; each dep group lists their files in that order)."""
    exps = {e: params[e]["train_seeds"][0] for e in params["experiments"] if images(params, e)}
    runs = {m: [model_files(e, student_run(m, s))["outs"] for e, s in exps.items()] for m in STUDENTS}
    deps = Files(teachers=[teacher_pt(e) for e in exps], stores=[store_dir(e) for e in exps])
    for m in STUDENTS:
        deps[m] = [o.model for o in runs[m]]
        deps[f"{m}_configs"] = [o.config for o in runs[m]]
    return Stage(name="benchmark", cmd="python -m kdm benchmark", deps=deps,
                 outs=Files(csv="results/benchmarks.csv", md="results/benchmarks.md", png="results/benchmarks.png"),
                 params=("benchmark",), log="logs/benchmark.log",
                 args=dict(experiments=exps))


SWEEPS_DVC = "workflow/sweeps/dvc.yaml"     # apart from dvc.yaml: `dvc repro workflow/sweeps/dvc.yaml` runs them


@dataclass(frozen=True)
class Point:
    """A point of a sweep (params.yaml `sweeps:`, kdm.config.sweep_points): a value of each axis, set on the students
    the sweep trains."""
    exp: str
    sweep: str
    name: str               # e.g. "latent_dim=64" or "push=0,adv=0.01"
    values: tuple           # (axis key, value) in the axes' order

    def settings(self, model) -> dict:
        return point_settings(self.values, model)

    def overrides(self, model) -> tuple:
        return tuple((f"{self.exp}.{model}.{k}", v) for k, v in self.settings(model).items())

    def run(self, model, seed) -> str:
        return f"sweeps/{self.sweep}/{self.name}/{student_run(model, seed)}"

    def stage_name(self, name) -> str:
        """A DVC stage name (letters, digits, - and _ only): the base stage's, with the sweep and point."""
        slug = self.name.replace("=", "-").replace(",", "_").replace(".", "p")
        return name.replace(f"{self.exp}-", f"{self.exp}-sweep-{self.sweep}-{slug}-", 1)

    def cmd(self, cmd) -> str:
        return f"{cmd} --point {self.sweep}/{self.name}"


def points(params, sweep) -> list[Point]:
    s = params["sweeps"][sweep]
    return [Point(s["experiment"], sweep, name, values) for name, values in sweep_points(s)]


def sweep_seeds(params, sweep) -> list[int]:
    s = params["sweeps"][sweep]
    return s.get("seeds", params[s["experiment"]]["train_seeds"])


def sweep_runs(params, sweep) -> list[tuple[Point, str, int, str]]:
    """(point, model, seed, run) of every student a sweep measures. A point whose settings leave the student as
    the experiment trains it (pairs_used: all of the store's) is the experiment's own run for the seeds it trains:
    `run` is then e.g. kdm-s0, and nothing is trained again."""
    s = params["sweeps"][sweep]
    exp = s["experiment"]
    out = []
    for point in points(params, sweep):
        for model in sweep_students(s):
            base = params[exp][model]
            mine = with_settings(base, point.settings(model))
            if not imported(params[exp]["pairs"]) and mine.get("pairs_used") == params[exp]["pairs"]["count"]:
                mine.pop("pairs_used")
            same = mine == base
            for seed in sweep_seeds(params, sweep):
                reuse = same and seed in params[exp]["train_seeds"]
                out.append((point, model, seed, student_run(model, seed) if reuse else point.run(model, seed)))
    return out


def sweep_table(params, sweep):
    """A sweep's table and figure: every run's evaluation, the teacher's (the line to approach) and the
    experiment's own students' (the lines the points move from)."""
    exp = params["sweeps"][sweep]["experiment"]
    runs = [(p.name, p.values, m, seed, f"{eval_dir(exp, run)}/metrics.json") for p, m, seed, run in
            sweep_runs(params, sweep)]
    own = [evaluate_student(params, exp, m, seed).metrics.metrics
           for m in sweep_students(params["sweeps"][sweep]) for seed in params[exp]["train_seeds"]]
    d = f"results/sweeps/{sweep}"
    return Stage(name=f"sweep-{sweep}", cmd=f"python -m kdm sweep {sweep}",
                 deps=Files(teacher=evaluate_teacher(params, exp).metrics.metrics, own=own,
                            metrics=[r[-1] for r in runs if r[-1] not in own]),
                 outs=Files(csv=f"{d}.csv", md=f"{d}.md", tex=f"{d}.tex"), metrics=Files(summary=f"{d}.json"),
                 plots=Files(figure=f"{d}.png"), params=(f"sweeps.{sweep}", f"{exp}.pairs"),
                 log=f"logs/sweeps/{sweep}.log", args=dict(exp=exp, sweep=sweep, runs=runs))


def sweep_stages(params, sweep) -> list[Stage]:
    """A sweep's training and evaluation stages (the points that are not the experiment's own runs), then its
    table."""
    exp = params["sweeps"][sweep]["experiment"]
    new = [(p, m, seed) for p, m, seed, run in sweep_runs(params, sweep) if run == p.run(m, seed)]
    return ([train(exp, m, seed, gpus(params, exp, m), point=p) for p, m, seed in new]
            + [evaluate_student(params, exp, m, seed, point=p) for p, m, seed in new] + [sweep_table(params, sweep)])


def all_sweep_stages(params) -> list[Stage]:
    """The stages of every sweep that runs (of an experiment in `experiments:`)."""
    return [s for sweep in active_sweeps(params) for s in sweep_stages(params, sweep)]


def experiment_stages(params, exp) -> list[Stage]:
    """Every stage of experiment `exp`, in topological order."""
    out = [classifier(exp)] if has_classifier(params, exp) else [reference(exp)] if images(params, exp) else []
    out.append(teacher(exp, gpus(params, exp, "teacher")))
    out += [pairs(exp, i) for i in range(shard_count(params, exp))]
    out.append(store(exp, shard_count(params, exp)))
    out += rederives(params, exp)
    out += [train(exp, m, s, gpus(params, exp, m)) for m in STUDENTS for s in params[exp]["train_seeds"]]
    return out + list(evaluations(params, exp)) + curves(params, exp)


def stages(params) -> list[Stage]:
    """Every stage of the default run, in topological order."""
    return [check()] + [s for exp in params["experiments"] for s in experiment_stages(params, exp)] + [table(params)]


def stage_params(params, stage: Stage) -> dict:
    """The params a stage reads, keyed by their section name (e.g. 'kdm', 'sampler'), with a sweep point's
    settings over params.yaml's."""
    for key, value in stage.overrides:
        exp, model, dotted = key.split(".", 2)
        params = {**params, exp: {**params[exp], model: with_settings(params[exp][model], {dotted: value})}}
    return {key.split(".")[-1]: section(params, key) for key in stage.params}


def _strip(path):
    return path.rstrip("/")


def _plot_props(params, s: Stage, path: str) -> dict:
    """How `dvc plots show` draws a CSV: lines against its step column; a loss log its total loss, a snapshot curve
    its main metric (FID for images, precision for 2-D data)."""
    if not path.endswith(".csv"):
        return {}
    y = "loss" if path.endswith("/train.csv") else "fid" if images(params, s.args["exp"]) else "precision"
    return {"x": "step", "y": y, "x_label": "iteration", "y_label": y, "title": f"{s.name}: {y}"}


def _dvc_stage(s: Stage, params) -> dict:
    entry = {"cmd": s.cmd}
    if s.deps:
        entry["deps"] = [_strip(d) for d in s.deps.paths()]
    if s.params:
        entry["params"] = list(s.params)
    if s.outs:      # a persistent marker is not worth caching
        entry["outs"] = [{_strip(o): {"persist": True, "cache": False}} if s.persist else _strip(o)
                         for o in s.outs.paths()]
    # metrics and plots are cached like the other outputs: results/ is not in Git, so DVC's cache is what lets
    # `dvc exp show`, `dvc metrics diff` and `dvc plots diff` read them at other revisions and experiments
    if s.metrics:
        entry["metrics"] = list(s.metrics.paths())
    if s.plots:
        entry["plots"] = [{p: props} if (props := _plot_props(params, s, p)) else p for p in s.plots.paths()]
    return entry


def dvc_files(params) -> dict[str, str]:
    """dvc.yaml for the experiments that run by default, and (with a `benchmark` section) the benchmark's
    own dvc.yaml, run from the project root: `dvc repro workflow/benchmark/dvc.yaml`; (with `sweeps`) the sweeps'
    stages in theirs: `dvc repro workflow/sweeps/dvc.yaml`."""
    header = ("# Generated from params.yaml by `python -m kdm dvc-yaml` (kdm/dag.py): do not edit by hand.\n"
              "# Snakemake runs the same stages (Snakefile); tests/test_dag.py checks that the two agree.\n")
    out = {"dvc.yaml": header + yaml.safe_dump({"stages": {s.name: _dvc_stage(s, params) for s in stages(params)}},
                                               sort_keys=False, width=120)}
    apart = {BENCHMARK_DVC: [benchmark(params)] if "benchmark" in params else [], SWEEPS_DVC: all_sweep_stages(params)}
    for path, of_file in apart.items():        # run from the project root
        if of_file:
            out[path] = header + yaml.safe_dump({"stages": {s.name: {"wdir": "../..", **_dvc_stage(s, params)}
                                                            for s in of_file}}, sort_keys=False, width=120)
    return out
