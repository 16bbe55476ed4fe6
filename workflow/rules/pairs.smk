# Teacher pairs, one job per shard of the seed range, gathered into the store (or imported into it).


rule pairs:
    input:
        teacher="results/{exp}/teacher/model.pt",
    output:
        shard=directory("results/{exp}/pairs/shard-{shard}"),
    log:
        "logs/{exp}/pairs-{shard}.log",
    priority: PRIORITY["pairs"]
    conda:
        "../envs/kdm.yaml"
    resources:
        gpu=1,  # each shard samples on its own GPU (kdm.device)
    params:
        sampler=section("sampler"),
        pairs=section("pairs"),
    shell:
        "python -m kdm pairs {wildcards.exp} {wildcards.shard}"


rule store:
    input:
        shards=shards,
        teacher="results/{exp}/teacher/model.pt",
    output:
        store=directory("results/{exp}/store"),
    log:
        "logs/{exp}/store.log",
    priority: PRIORITY["store"]
    conda:
        "../envs/kdm.yaml"
    params:  # every shard (or the import) is checked against them
        sampler=section("sampler"),
        pairs=section("pairs"),
    shell:
        "python -m kdm store {wildcards.exp}"


rule rederive:
    input:
        store="results/{exp}/store",
        teacher="results/{exp}/teacher/model.pt",
    output:
        report="results/{exp}/rederive.json",
    log:
        "logs/{exp}/rederive.log",
    conda:
        "../envs/kdm.yaml"
    resources:
        gpu=1,  # re-samples on the device that made the pairs, for a bitwise comparison
    params:
        rederive=section("rederive"),
    shell:
        "python -m kdm rederive {wildcards.exp}"
