# The KDM pipeline for Snakemake: `snakemake --cores all`. The same stages run under DVC from dvc.yaml, which
# kdm/dag.py generates; tests/test_dag.py and tests/test_rerun.py check that the two plan and re-run alike.
from snakemake.utils import min_version

min_version("8.0")


report: "workflow/report/workflow.rst"  # `snakemake --report results/report.html`


include: "workflow/rules/common.smk"  # checks params.yaml, then loads it as the config
include: "workflow/rules/check.smk"
include: "workflow/rules/evaluator.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/pairs.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/table.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/sweeps.smk"


rule all:
    default_target: True
    input:
        rules.table.output,
        rules.check.output,
        # the stores' re-derivations, where an experiment has a rederive section (nothing reads them)
        [
            p
            for exp in config["experiments"]
            for s in dag.rederives(config, exp)
            for p in s.metrics.paths()
        ],
        # students' snapshot curves, where snapshots.every > 0 (nothing reads them)
        [
            p
            for exp in config["experiments"]
            for s in dag.curves(config, exp)
            for p in s.plots.paths()
        ],
