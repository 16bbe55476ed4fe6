# Not in the default target: `snakemake --cores all benchmark` measures speed, memory and scale once the
# image experiments' teachers, stores and students exist. It takes every core so timings run alone.
if "benchmark" in config:

    rule benchmark:
        input:
            [p.rstrip("/") for p in dag.benchmark(config).deps],
        output:
            dag.benchmark(config).outs,
        params:
            declared=dag.stage_params(config, dag.benchmark(config)),
        log:
            dag.benchmark(config).log,
        threads: workflow.cores
        shell:
            dag.benchmark(config).cmd
