def teacher_stage(wc):
    return dag.teacher(wc.exp, dag.gpus(config, wc.exp, "teacher"))


rule teacher:
    priority: PRIORITY["teacher"]
    output:
        files(dag.teacher("{exp}").outputs),
    params:
        declared=declared_params(teacher_stage),
        cmd=lambda wc: teacher_stage(wc).cmd,       # torchrun when it trains on several GPUs
    log:
        dag.teacher("{exp}").log,
    threads: TRAIN_THREADS
    resources:
        gpu=lambda wc: dag.gpus(config, wc.exp, "teacher"),
        nodes=1,                                    # torchrun --standalone: all of a job's GPUs on one node
    shell:
        "{params.cmd}"
