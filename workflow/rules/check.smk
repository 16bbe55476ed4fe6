# The check: params.yaml and the files it names (kdm/dag.py, check). Snakemake has already checked both at
# parse time (common.smk), before any job; this rule writes the marker that DVC's stages depend on (DVC
# removes a stage's outputs before running it, so it must check first), so that DVC can adopt Snakemake's
# results. Like DVC's check stage, it re-runs when params.yaml changes, and nothing depends on it here.


rule check:
    input:
        params="params.yaml",
    output:
        checked=dag.CHECKED,
    log:
        "logs/check.log",
    localrule: True  # a second's work: not worth a cluster job
    conda:
        "../envs/kdm.yaml"
    shell:
        "python -m kdm check"
