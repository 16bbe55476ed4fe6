# Shared by every rule: params validation, and helpers that read a rule's params and resources from it.
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from kdm import config as kdm_config
from kdm import dag

# The CLI's check of params.yaml (the schema plus cross-key checks, with a message naming the key) and of the
# files it names, then Snakemake's own check against the same schema: bad params stop here, before any job runs.
try:
    PARAMS = kdm_config.load("params.yaml")
    kdm_config.check_files(PARAMS)
except kdm_config.ParamsError as e:
    raise ValueError(str(e)) from None


configfile: "params.yaml"


validate(config, str(kdm_config.SCHEMA_PATH))
if config != PARAMS:
    raise ValueError(
        "params.yaml: the jobs read params.yaml itself, so --config/--configfile overrides "
        "would be ignored; edit params.yaml (or run in another --directory) instead"
    )


def all_cores(wildcards):
    """Threads of a job that runs alone (evaluations and the benchmark time what they run): every core of the
    run. Decided when the job is planned: commands that run no job (--report, --dag, --summary, --unlock) set no
    core count, and their jobs get one thread.
    """
    try:
        return workflow.cores
    except WorkflowError:
        return 1


def train_threads(wildcards):
    """Threads of a training job (teacher, classifier, students). Small networks on CPU scale poorly with
    threads (1.5-1.6x from 1 to 2 for the checkerboard MLPs and the digits UNets), so two trainings side by
    side use the cores better than one with all of them; past 8 threads, more parallel jobs do.
    """
    return max(1, min(8, all_cores(wildcards) // 2))


# On few cores, start the long chains first (teacher -> pairs -> store -> KDM) so the longest trainings
# overlap instead of one running alone at the end while an evaluation waits for all cores (seen: a digits
# KDM training ran alone for 5 of 26.5 minutes of the default run on 2 cores).
PRIORITY = {"teacher": 4, "pairs": 3, "store": 3, "train_kdm": 2, "train_kd": 1}


wildcard_constraints:
    exp="[a-z][a-z0-9-]*",
    shard=r"\d+",
    seed=r"\d+",
    sweep="[a-z][a-z0-9-]*",
    point="[^/]+",


def section(dotted):
    """A params section of the job's experiment, e.g. section("evaluate.extractor"): the job re-runs when
    it changes, as the DVC stage does (both declare what the stage reads; tests/test_rerun.py).
    """
    return lambda wc: kdm_config.section(config, f"{wc.exp}.{dotted}")


def gpus(key):
    """The GPUs of a training job (its params section's `gpus`, default 1): SLURM's --gpus."""
    return lambda wc: dag.gpus(config, wc.exp, key)


def launch(key):
    """How a training job starts: python, or torchrun with one process per GPU."""
    return lambda wc: dag.launch(dag.gpus(config, wc.exp, key))


def evaluator(wc):
    """What an image experiment's evaluations read besides the models: the classifier and its metrics, or
    the reference statistics (by params: evaluate.extractor.kind); nothing for 2-D data.
    """
    return dag.evaluator_deps(config, wc.exp)


def shards(wc):
    """The experiment's pair shards: none when its pairs are imported (pairs.source: import)."""
    return [
        dag.shard_dir(wc.exp, i).rstrip("/")
        for i in range(dag.shard_count(config, wc.exp))
    ]


def point_of(wc):
    """The job's sweep point (kdm.dag.Point)."""
    (point,) = [p for p in dag.points(config, wc.sweep) if p.name == wc.point]
    return point


def point_params(model):
    """The student's params at the job's point: its section with the point's settings (re-run when either changes)."""
    return lambda wc: kdm_config.with_settings(
        config[wc.exp][model], point_of(wc).settings(model)
    )


def point_arg(wc):
    """A sweep job's command-line tail: which point of which sweep (kdm.dag.Point.cmd)."""
    return f" --point {wc.sweep}/{wc.point}"
