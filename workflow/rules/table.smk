# The results table: every evaluation's metrics, mean and spread over training seeds, beside published rows.


rule table:
    input:
        metrics=dag.table(config).deps.metrics,
    output:
        csv="results/table.csv",
        md="results/table.md",
    log:
        "logs/table.log",
    conda:
        "../envs/kdm.yaml"
    params:  # an experiment dropped from the list leaves the table too
        experiments=config["experiments"],
    shell:
        "python -m kdm table"
