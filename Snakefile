# The KDM pipeline for Snakemake: `snakemake --cores all`. Its stages are defined once in kdm/dag.py,
# which also generates dvc.yaml, so both tools run the same commands on the same files.
from snakemake.utils import min_version

min_version("8.0")


include: "workflow/rules/common.smk"  # checks params.yaml, then loads it as the config
include: "workflow/rules/teacher.smk"
include: "workflow/rules/pairs.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/table.smk"
include: "workflow/rules/benchmark.smk"


rule all:
    input:
        dag.table(config).outs,
    default_target: True
