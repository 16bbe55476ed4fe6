rule train:
    input:
        inputs(lambda wc: dag.train(wc.exp, wc.model, wc.seed)),
    output:
        files(dag.train("{exp}", "{model}", "{seed}").outputs),
    params:
        declared=declared_params(lambda wc: dag.train(wc.exp, wc.model, wc.seed)),
    log:
        dag.train("{exp}", "{model}", "{seed}").log,
    # one training at a time gets the cores (small MLPs/UNets on CPU scale to a few threads: 1.6x from
    # 1 to 2 on the checkerboard KDM); past 8 threads, parallel jobs use a large machine better
    threads: min(workflow.cores, 8)
    shell:
        dag.train("{wildcards.exp}", "{wildcards.model}", "{wildcards.seed}").cmd
