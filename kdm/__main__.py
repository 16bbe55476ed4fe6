"""The one CLI that Snakemake and DVC both call:

    python -m kdm classifier EXP          # image experiments: the evaluator's feature extractor
    python -m kdm reference EXP           # image experiments with Inception: the real images' statistics
    python -m kdm teacher EXP
    python -m kdm pairs EXP SHARD
    python -m kdm store EXP
    python -m kdm train EXP {kdm,kd} SEED
    python -m kdm evaluate EXP teacher | python -m kdm evaluate EXP {kdm,kd} SEED
    python -m kdm evaluate EXP data       # image experiments: the evaluator's floor on real images
    python -m kdm curve EXP {kdm,kd} SEED # a student's snapshots against iterations (snapshots.every > 0)
    python -m kdm table
    python -m kdm train EXP {kdm,kd} SEED --point SWEEP/POINT    # a sweep point's student (evaluate likewise)
    python -m kdm sweep SWEEP             # a sweep's table and figure: results/sweeps/SWEEP.{csv,md,tex,json,png}
    python -m kdm benchmark               # speed, memory and scale: results/benchmarks.{csv,md,png}
    python -m kdm dvc-yaml [--check]      # (re)generate dvc.yaml (and workflow/benchmark/dvc.yaml) from params.yaml
    python -m kdm check                   # params.yaml and the files it names: the first stage of both DAGs
    python -m kdm verify EXP              # full sha256 check of the pair shards, store and teacher samples
    python -m kdm verify EXP --rederive N # ... and N random store seeds re-sampled with the recorded teacher
    python -m kdm export EXP MODEL --seeds 0-49999 --outdir DIR [--subdirs]
                                          # MODEL teacher | kdm-s0 | kd-s1 ...: one PNG per seed, named and drawn
                                          # as EDM's generate.py does (for any external FID tool)
    python -m kdm export-pairs EXP --format {get,kdm,edm-png} --out DIR [--count N] [--batch B]
                                          # the store's pairs as GET's, the KDM authors' (kdm-npz) or EDM's data
                                          # set, with CARD.md and EXPORT.json (kdm/pairexport.py)
    python -m kdm profile EXP [--variants fp32,bf16+channels_last] [--scale small] ...
                                          # a training step's speed, FLOPs, syncs and ops at EXP's sizes, random
                                          # weights, synthetic pairs: results/profile/EXP.{json,md}

Pair sets are checked on every open: a fast check (sizes, headers, hashes of each array's first and
last MiB) by default, every byte with KDM_VERIFY=full in the environment.

Options: --params PATH (default params.yaml). Exit status 2 for invalid params or arguments, 1 for a
failed stage.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from kdm import config, dag
from kdm.io import atomic_path, setup_logging
from kdm.pairset import PairSetError, open_pairset

log = logging.getLogger("kdm")


def _parser():
    p = argparse.ArgumentParser(prog="python -m kdm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("classifier").add_argument("exp")
    sub.add_parser("reference").add_argument("exp")
    sub.add_parser("teacher").add_argument("exp")
    s = sub.add_parser("pairs")
    s.add_argument("exp")
    s.add_argument("shard", type=int)
    sub.add_parser("store").add_argument("exp")
    sub.add_parser("rederive").add_argument("exp")
    s = sub.add_parser("train")
    s.add_argument("exp")
    s.add_argument("model", choices=dag.STUDENTS)
    s.add_argument("seed", type=int)
    s.add_argument("--point", help="SWEEP/POINT: a sweep point's student (params.yaml sweeps:)")
    s = sub.add_parser("evaluate")
    s.add_argument("exp")
    s.add_argument("model", choices=("data", "teacher") + dag.STUDENTS)
    s.add_argument("seed", type=int, nargs="?")
    s.add_argument("--point", help="SWEEP/POINT: a sweep point's student (params.yaml sweeps:)")
    s = sub.add_parser("curve")
    s.add_argument("exp")
    s.add_argument("model", choices=dag.STUDENTS)
    s.add_argument("seed", type=int)
    sub.add_parser("table")
    sub.add_parser("sweep", help="a sweep's table and figure: results/sweeps/NAME.{csv,md,tex,json,png}").add_argument(
        "name")
    sub.add_parser("benchmark")
    s = sub.add_parser("verify", help="check every pair set of an experiment byte by byte; --rederive N: and "
                       "re-sample N of the store's seeds with its teacher")
    s.add_argument("exp")
    s.add_argument("--rederive", type=int, default=0, metavar="N", help="re-sample N random seeds of the store with "
                   "the teacher and sampler it records, and compare x_T, labels and x_0")
    s.add_argument("--seed", type=int, default=0, help="draws the seeds to re-derive (default 0)")
    s.add_argument("--teacher", type=Path, help="a teacher model file, for a store that records none (imported)")
    s.add_argument("--sha256", help="the sha256 --teacher must have")
    s.add_argument("--tolerance", type=float, default=0.0, help="largest absolute difference accepted (default 0: "
                   "bitwise, for the device and precision that made the pairs)")
    s = sub.add_parser("export", help="write a built model's images as PNGs named by seed, as EDM's generate.py")
    s.add_argument("exp")
    s.add_argument("model", help="teacher, or a student run such as kdm-s0 or kd-s1")
    s.add_argument("--seeds", type=_int_list, required=True, help="seeds such as 0-49999 or 0,5,10-19")
    s.add_argument("--outdir", type=Path, required=True)
    s.add_argument("--subdirs", action="store_true", help="one folder per 1000 seeds, as EDM's --subdirs")
    s.add_argument("--batch", type=int, default=None, help="images per call (default: evaluate.batch)")
    s = sub.add_parser("export-pairs", help="write the store's pairs as GET's, the KDM authors' or EDM's data set")
    s.add_argument("exp")
    s.add_argument("--format", required=True, help="get (GET's latent/ and image/ chunks), kdm (the KDM authors' "
                   "path<i>.npz; also kdm-npz) or edm-png (EDM's dataset_tool.py folder of x_0 PNGs)")
    s.add_argument("--out", type=Path, required=True, help="an empty or new folder")
    s.add_argument("--count", type=int, default=None, help="the first N pairs in seed order (default: all)")
    s.add_argument("--batch", type=int, default=None, help="get: seeds per sampler batch of the layout (default: "
                   "the store's pairs batch, else GET's 250)")
    s = sub.add_parser("profile", help="time and count a training step of EXP's students (random weights, "
                       "synthetic pairs) and its teacher's pairs/s: results/profile/EXP.{json,md}")
    s.add_argument("exp")
    s.add_argument("--models", type=_names, default=["kdm"], help="students and teacher (trained on the "
                   "experiment's data), comma-separated (default kdm)")
    s.add_argument("--variants", type=_names, default=["fp32"],
                   help="training variants, comma-separated: fp32 or bf16, then +channels_last, +compile, "
                   "+compile=blocks, +cudagraphs (e.g. bf16+compile=blocks); none: no student (default fp32)")
    s.add_argument("--pairs", type=_names, default=["fp32"], help="teacher pair precisions, comma-separated: fp32, "
                   "bf16; none: no teacher (default fp32)")
    s.add_argument("--scale", choices=("paper", "small"), default="paper",
                   help="small: UNets of 16 channels and one block per level, 8 rows per batch (a CPU in seconds)")
    s.add_argument("--width", type=int, default=None, help="model_channels of every UNet")
    s.add_argument("--batch", type=int, default=None, help="training batch (default: the experiment's)")
    s.add_argument("--steps", type=int, default=5, help="steps measured per variant (default 5)")
    s.add_argument("--repeats", type=int, default=3, help="runs of each length; the fastest counts (default 3)")
    s.add_argument("--pairs-batch", type=int, default=None, help="teacher batch (default: pairs.batch)")
    s.add_argument("--pairs-count", type=int, default=None, help="pairs timed (default: two batches)")
    s.add_argument("--out", type=Path, default=Path("results/profile"), help="output folder (default results/profile)")
    sub.add_parser("check", help="check params.yaml, the files it names and (under DVC) dvc.yaml; write "
                   f"{dag.CHECKED}")
    s = sub.add_parser("dvc-yaml", help="write dvc.yaml for params.yaml's experiments (and the benchmark's)")
    s.add_argument("--check", action="store_true", help="only check that the DVC files are up to date")
    return p


def _int_list(text: str) -> list[int]:
    """EDM's seed syntax: '0-99' or '1,5,10-19' (ranges inclusive)."""
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        try:
            out += list(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected seeds such as 0-99 or 1,5,10-19") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected non-negative seeds such as 0-99 or 1,5,10-19")
    return out


def _names(text: str) -> list[str]:
    """A comma-separated list; 'none' is the empty one."""
    return [] if text == "none" else [t for t in text.split(",") if t]


def _check_experiment(params: dict, exp: str, source: str) -> None:
    if exp not in params or exp in config.RESERVED:
        known = sorted(k for k in params if k not in config.RESERVED)
        raise config.ParamsError(f"experiment {exp!r}: no such section in {source}; expected one of {known}")


def stage_name(a) -> str:
    """The name of the dag.Stage a command line runs."""
    if a.command in ("table", "benchmark"):
        return a.command
    if a.command == "pairs":
        return f"{a.exp}-pairs-{a.shard}"
    if a.command in ("train", "evaluate", "curve") and a.seed is not None:
        return f"{a.exp}-{a.command}-{dag.student_run(a.model, a.seed)}"
    return f"{a.exp}-{a.command}" + (f"-{a.model}" if a.command == "evaluate" else "")


def resolve_stage(params: dict, a) -> dag.Stage:
    """The dag.Stage a command line names, if params have it."""
    if a.command == "benchmark":
        if "benchmark" not in params:
            raise config.ParamsError(f"benchmark: {a.params} has no benchmark section; expected one as in the "
                                     "shipped params.yaml")
        stage = dag.benchmark(params)
        if not stage.args["experiments"]:
            raise config.ParamsError(f"benchmark: experiments in {a.params} lists no image experiment; the benchmark "
                                     "measures the teachers and students of image experiments")
        return stage
    if a.command == "table":
        return dag.table(params)
    if a.command == "sweep" or getattr(a, "point", None):
        return _sweep_stage(params, a)
    _check_experiment(params, a.exp, a.params)
    if a.command == "evaluate" and (a.seed is None) != (a.model in ("data", "teacher")):
        raise config.ParamsError(f"evaluate {a.exp} {a.model}: " + (f"the {a.model} has no training seed, got {a.seed}"
                                 if a.seed is not None else "a training seed is required"))
    name = stage_name(a)
    known = {s.name: s for s in dag.experiment_stages(params, a.exp)}
    if name not in known:
        e = params[a.exp]
        decide = [f"data.kind {e['data']['kind']!r}", f"pairs.source {e['pairs'].get('source', 'teacher')!r}",
                  f"pairs.shards {e['pairs'].get('shards', 0)}", f"train_seeds {e['train_seeds']}",
                  f"snapshots.every {e['snapshots']['every']}", f"a rederive section: {'rederive' in e}"]
        if "extractor" in e["evaluate"]:
            decide.insert(1, f"evaluate.extractor.kind {e['evaluate']['extractor']['kind']!r}")
        raise config.ParamsError(f"{name}: {a.params} gives experiment {a.exp} no such stage ({a.exp} has "
                                 f"{', '.join(decide)}); its stages are: {', '.join(known)}")
    return known[name]


def _sweep_stage(params: dict, a) -> dag.Stage:
    """A sweep's table, or a sweep point's training or evaluation."""
    sweep, _, point = (a.name if a.command == "sweep" else a.point).partition("/")
    sweeps = params.get("sweeps", {})
    if sweep not in sweeps:
        raise config.ParamsError(f"sweep {sweep!r}: {a.params} has no such sweep; expected one of {sorted(sweeps)}")
    if sweep not in config.active_sweeps(params):
        raise config.ParamsError(f"sweep {sweep!r} is of experiment {sweeps[sweep]['experiment']!r}, which is not in "
                                 f"experiments {params['experiments']} of {a.params}; expected it listed there")
    if a.command == "sweep":
        return dag.sweep_table(params, sweep)
    if sweeps[sweep]["experiment"] != a.exp:
        raise config.ParamsError(f"{a.command} {a.exp} --point {a.point}: sweep {sweep!r} is of experiment "
                                 f"{sweeps[sweep]['experiment']!r}")
    known = {s.name: s for s in dag.sweep_stages(params, sweep)}
    name = next((p.stage_name(f"{a.exp}-{a.command}-{dag.student_run(a.model, a.seed)}")
                 for p in dag.points(params, sweep) if p.name == point), None)
    if name not in known:
        raise config.ParamsError(f"{a.command} {a.exp} {a.model} {a.seed} --point {a.point}: sweep {sweep!r} trains no "
                                 f"such student (its points: {', '.join(p.name for p in dag.points(params, sweep))}; "
                                 f"students {config.sweep_students(sweeps[sweep])}; seeds "
                                 f"{dag.sweep_seeds(params, sweep)}; a point equal to the experiment's own student is "
                                 "that student)")
    return known[name]


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    try:
        params = config.load(a.params)
        if a.command == "dvc-yaml":
            return _dvc_yaml(params, a.check)
        if a.command == "check":
            return _check(params, a.params)
        if a.command == "verify":
            _check_experiment(params, a.exp, a.params)
            return _verify(params, a)
        if a.command == "export":
            _check_experiment(params, a.exp, a.params)
            return _export(params, a)
        if a.command == "export-pairs":
            _check_experiment(params, a.exp, a.params)
            return _export_pairs(a)
        if a.command == "profile":
            _check_experiment(params, a.exp, a.params)
            return _profile(params, a)
        stage = resolve_stage(params, a)
    except config.ParamsError as e:
        print(f"kdm: error: {e}", file=sys.stderr)
        return 2
    setup_logging(stage.log)
    log.info("stage %s: %s", stage.name, stage.cmd)
    module = importlib.import_module(f"kdm.stages.{a.command}")     # torch and the stage's code: only now
    try:
        module.run(stage, dag.stage_params(params, stage))
    except (ValueError, OSError) as e:      # bad input or data (kdm.training.NonFiniteLoss too): a message
        log.error("stage %s failed: %s", stage.name, e)
        return 1
    log.info("stage %s done", stage.name)
    return 0


def _verify(params, a) -> int:
    """Full check of every pair set the experiment has written so far; with --rederive, of the store's pairs
    against its teacher too."""
    exp = a.exp
    dirs = [d.rstrip("/") for d in [dag.shard_dir(exp, i) for i in range(dag.shard_count(params, exp))]
            + [dag.store_dir(exp), dag.evaluate_teacher(params, exp).outs.samples]]
    failed = 0
    for d in dirs:
        if not Path(d).exists():
            print(f"{d}: not built yet")
            continue
        try:
            ps = open_pairset(d, check="full")
            print(f"{d}: ok ({len(ps)} pairs, sha256 of every array matches)")
        except (PairSetError, OSError) as e:
            failed += 1
            print(f"{d}: FAILED: {e}", file=sys.stderr)
    if a.rederive and not failed:
        store = Path(dag.store_dir(exp))
        if not store.exists():
            print(f"{store}: not built yet; nothing to re-derive", file=sys.stderr)
            return 1
        sampling = importlib.import_module("kdm.sampling")      # torch and the library: only now, as for a stage
        try:
            ok, lines, _ = sampling.rederive(open_pairset(store), a.rederive, a.seed, a.teacher, a.sha256, a.tolerance)
        except ValueError as e:
            print(f"kdm: error: {e}", file=sys.stderr)
            return 2
        print("\n".join(f"{store}: rederive: {line}" for line in lines), file=sys.stdout if ok else sys.stderr)
        print(f"{store}: rederive: {'ok' if ok else 'FAILED'}", file=sys.stdout if ok else sys.stderr)
        failed += not ok
    return 1 if failed else 0


def _export(params, a) -> int:
    """`export`: a built model's images for the given seeds, one PNG each, as EDM's generate.py writes them."""
    runs = {"teacher": dag.teacher_pt(a.exp)} | {dag.student_run(m, s): dag.model_files(a.exp, dag.student_run(m, s))[
        "outs"].model for m in dag.STUDENTS for s in params[a.exp]["train_seeds"]}
    if a.model not in runs:
        raise config.ParamsError(f"export {a.exp} {a.model}: no such model; {a.params} gives {a.exp} the models "
                                 f"{', '.join(runs)}")
    if not dag.images(params, a.exp):
        raise config.ParamsError(f"export {a.exp}: not an image experiment (data.kind "
                                 f"{params[a.exp]['data']['kind']!r}); PNGs are written for images only")
    sampling = importlib.import_module("kdm.sampling")      # torch and the library: only now, as for a stage
    try:
        n = sampling.export_pngs(runs[a.model], params[a.exp], a.seeds, a.outdir, a.subdirs, a.batch,
                                 student=a.model != "teacher", desc=f"export {a.exp} {a.model}")
    except (OSError, ValueError) as e:
        print(f"kdm: error: {e}; build it first (snakemake --cores all {runs[a.model]})", file=sys.stderr)
        return 1
    print(f"{a.outdir}: {n} images of {a.exp} {a.model}, seeds {a.seeds[0]}..{a.seeds[-1]}")
    return 0


def _export_pairs(a) -> int:
    """`export-pairs`: the store in a published trainer's layout (kdm.pairexport); bad input is a one-line error."""
    store = dag.store_dir(a.exp)
    if not Path(store).is_dir():
        print(f"kdm: error: {store}: not built yet; build it first (snakemake --cores all {store})", file=sys.stderr)
        return 1
    pairexport = importlib.import_module("kdm.pairexport")      # torch and the library: only now, as for a stage
    try:
        r = pairexport.export_pairs(store, a.format, a.out, a.count, a.batch)
    except (OSError, ValueError) as e:
        print(f"kdm: error: {e}", file=sys.stderr)
        return 1
    print(f"{a.out}: {r['count']} pairs of {a.exp} (seeds {r['seeds'][0]}..{r['seeds'][1]}) as {r['format']}; "
          f"see {a.out / 'EXPORT.json'}")
    return 0


def _profile(params, a) -> int:
    """`profile`: kdm.profiling at the experiment's sizes; a bad variant or model is an argument error (2)."""
    bad = [m for m in a.models if m not in (*dag.STUDENTS, "teacher")]
    if bad or min(a.steps, a.repeats, a.batch or 1, a.width or 1, a.pairs_batch or 1, a.pairs_count or 1) < 1:
        raise config.ParamsError(f"profile: models are {', '.join(dag.STUDENTS)}, teacher (got {bad}); --steps, "
                                 "--repeats, --batch, --width, --pairs-batch and --pairs-count are positive")
    profiling = importlib.import_module("kdm.profiling")     # torch and the library: only now, as for a stage
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        r = profiling.profile(params[a.exp], a.exp, a.out, importlib.import_module("kdm.device").device(),
                              a.models, a.variants, a.pairs, a.scale, a.width, a.batch, a.steps, a.pairs_batch,
                              a.pairs_count, a.repeats)
    except (OSError, ValueError) as e:
        print(f"kdm: error: {e}", file=sys.stderr)
        return 1
    print(profiling.markdown(r))
    return 0


def _check(params, source) -> int:
    """The check stage (kdm.dag.check): the params are valid (loaded), the files they name exist, and under
    DVC the DAG it runs is the one these params give (a stale dvc.yaml would run other stages)."""
    named = config.check_files(params, source)
    if "DVC_STAGE" in os.environ and _dvc_yaml(params, check=True):
        return 2
    stage = dag.check()
    setup_logging(stage.log)
    with atomic_path(stage.outs.checked) as tmp:
        tmp.write_text(f"{source} and the files it names passed `{stage.cmd}`; the stages that read them depend "
                       "on this file (kdm/dag.py, check)\n")
    log.info("%s: valid; the %d files it names exist", source, len(named))
    return 0


def _dvc_yaml(params, check: bool) -> int:
    files = dag.dvc_files(params)
    gone = [p for p in (dag.BENCHMARK_DVC, dag.SWEEPS_DVC) if p not in files and Path(p).is_file()]  # params dropped
    if check:
        stale = gone + [p for p, text in files.items() if not Path(p).is_file() or Path(p).read_text() != text]
        if stale:
            print(f"kdm: error: {', '.join(stale)} out of date with params; run `python -m kdm dvc-yaml`",
                  file=sys.stderr)
            return 1
        return 0
    for path, text in files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    for path in gone:
        Path(path).unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
