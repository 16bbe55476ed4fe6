# Not in the default target: `snakemake --cores all benchmark` measures speed, memory and scale once the
# image experiments' teachers, stores and students exist. It takes every core so timings run alone.
if "benchmark" in config:

    rule benchmark:
        input:
            **dag.benchmark(config).deps,  # teachers, stores, students and their configs
        output:
            csv="results/benchmarks.csv",
            md="results/benchmarks.md",
            png=report(
                "results/benchmarks.png",
                caption="../report/benchmark.rst",
                category="Benchmark",
            ),
        log:
            "logs/benchmark.log",
        conda:
            "../envs/kdm.yaml"
        threads: all_cores
        params:
            benchmark=config["benchmark"],
        shell:
            "python -m kdm benchmark"
