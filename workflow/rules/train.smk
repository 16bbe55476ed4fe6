rule train:
    input:
        inputs(lambda wc: dag.train(wc.exp, wc.model, wc.seed)),
    output:
        files(dag.train("{exp}", "{model}", "{seed}").outputs),
    params:
        declared=declared_params(lambda wc: dag.train(wc.exp, wc.model, wc.seed)),
    log:
        dag.train("{exp}", "{model}", "{seed}").log,
    # kdm and kd students train side by side on a small machine
    threads: max(1, workflow.cores // 2)
    shell:
        dag.train("{wildcards.exp}", "{wildcards.model}", "{wildcards.seed}").cmd
