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
        # one training at a time gets the cores (small MLPs/UNets on CPU scale to a few threads: 1.6x from
        # 1 to 2 on the checkerboard KDM); past 8 threads, parallel jobs use a large machine better
        threads: min(workflow.cores, 8)
        shell:
            "{params.cmd}"
