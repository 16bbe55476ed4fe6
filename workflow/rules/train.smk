def train_stage(model):
    return lambda wc: dag.train(wc.exp, model, wc.seed, dag.gpus(config, wc.exp, model))


def train_cmd(model):
    return lambda wc: train_stage(model)(wc).cmd


def train_gpus(model):
    return lambda wc: dag.gpus(config, wc.exp, model)


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
            # functions bound here: a shell directive in a loop sees the loop variable's last value when it runs
            cmd=train_cmd(model),                   # torchrun when it trains on several GPUs
        log:
            dag.train("{exp}", model, "{seed}").log,
        threads: TRAIN_THREADS
        priority: PRIORITY[f"train_{model}"]
        resources:
            gpu=train_gpus(model),
            nodes=1,                                # torchrun --standalone: all of a job's GPUs on one node
        shell:
            "{params.cmd}"
