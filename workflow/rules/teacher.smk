rule teacher:
    output:
        files(dag.teacher("{exp}").outputs),
    params:
        declared=declared_params(lambda wc: dag.teacher(wc.exp)),
    log:
        dag.teacher("{exp}").log,
    threads: TRAIN_THREADS
    shell:
        dag.teacher("{wildcards.exp}").cmd
