# The results table: every evaluation's metrics, mean and spread over training seeds, beside published rows.


rule table:
    input:
        metrics=dag.table(config).deps.metrics,
    output:
        csv="results/table.csv",
        md="results/table.md",
        html=report(
            "results/table.html",
            caption="../report/table.rst",
            category="All experiments",
        ),
        tex="results/table.tex",
        summary="results/table.json",
        quality_vs_speed=report(
            "results/quality-vs-speed.png",
            caption="../report/quality_vs_speed.rst",
            category="All experiments",
        ),
    log:
        "logs/table.log",
    conda:
        "../envs/kdm.yaml"
    params:  # an experiment dropped from the list leaves the table too
        experiments=config["experiments"],
    shell:
        "python -m kdm table"
