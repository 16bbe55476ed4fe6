# Shared by every rule: params validation and helpers that turn kdm.dag stages into rule fields.
from snakemake.utils import validate

from kdm import config as kdm_config
from kdm import dag

# The CLI's check of params.yaml (the schema plus cross-key checks, with a message naming the key),
# then Snakemake's own check against the same schema: bad params stop here, before any job runs.
try:
    PARAMS = kdm_config.load("params.yaml")
except kdm_config.ParamsError as e:
    raise ValueError(str(e)) from None


configfile: "params.yaml"


validate(config, str(kdm_config.SCHEMA_PATH))
if config != PARAMS:
    raise ValueError("params.yaml: the jobs read params.yaml itself, so --config/--configfile overrides "
                     "would be ignored; edit params.yaml (or run in another --directory) instead")

# Threads of a training job (teacher, classifier, students). Small networks on CPU scale poorly with
# threads (1.5-1.6x from 1 to 2 for the checkerboard MLPs and the digits UNets), so two trainings side by
# side use the cores better than one with all of them; past 8 threads, more parallel jobs do.
TRAIN_THREADS = max(1, min(8, workflow.cores // 2))

# On few cores, start the long chains first (teacher -> pairs -> store -> KDM) so the longest trainings
# overlap instead of one running alone at the end while an evaluation waits for all cores (seen: a digits
# KDM training ran alone for 5 of 26.5 minutes of the default run on 2 cores).
PRIORITY = {"teacher": 4, "pairs": 3, "store": 3, "train_kdm": 2, "train_kd": 1}


wildcard_constraints:
    exp="[a-z][a-z0-9-]*",
    shard=r"\d+",
    model="|".join(dag.STUDENTS),
    seed=r"\d+",


def files(paths):
    """kdm.dag paths as Snakemake files: a trailing '/' marks a directory."""
    return [directory(p.rstrip("/")) if p.endswith("/") else p for p in paths]


def inputs(build):
    """An input function: the deps of the stage `build(wildcards)` returns."""
    return lambda wc: [p.rstrip("/") for p in build(wc).deps]


def declared_params(build):
    """The params sections a stage reads; Snakemake re-runs the job when they change."""
    return lambda wc: dag.stage_params(config, build(wc))
