rule pairs:
    priority: PRIORITY["pairs"]
    input:
        inputs(lambda wc: dag.pairs(wc.exp, wc.shard)),
    output:
        files(dag.pairs("{exp}", "{shard}").outputs),
    params:
        declared=declared_params(lambda wc: dag.pairs(wc.exp, wc.shard)),
    log:
        dag.pairs("{exp}", "{shard}").log,
    resources:
        gpu=1,                                      # each shard samples on its own GPU (kdm.training.device)
    shell:
        dag.pairs("{wildcards.exp}", "{wildcards.shard}").cmd


def store_stage(wc):
    return dag.store(wc.exp, dag.shard_count(config, wc.exp))


rule store:
    priority: PRIORITY["store"]
    input:
        inputs(store_stage),
    output:
        files(dag.store("{exp}", 0).outputs),
    log:
        dag.store("{exp}", 0).log,
    shell:
        dag.store("{wildcards.exp}", 0).cmd
