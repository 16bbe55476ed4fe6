def train_stage(model):
    return lambda wc: dag.train(wc.exp, model, wc.seed)


# One rule per student kind: their outputs differ (a KDM run also draws its operator's spectrum).
for model in dag.STUDENTS:

    rule:
        name:
            f"train_{model}"
        input:
            inputs(train_stage(model)),
        output:
            files(dag.train("{exp}", model, "{seed}").outputs),
        params:
            declared=declared_params(train_stage(model)),
            # bound here: a shell directive in a loop sees the loop variable's last value when it runs
            cmd=dag.train("{exp}", model, "{seed}").cmd,
        log:
            dag.train("{exp}", model, "{seed}").log,
        threads: TRAIN_THREADS
        shell:
            "{params.cmd}"
