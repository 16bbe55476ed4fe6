# The students, one job per (student, training seed): kdm (which also draws its operator's spectrum) and kd.


rule train_kdm:
    input:
        store="results/{exp}/store",
    output:
        model="results/{exp}/kdm-s{seed}/model.pt",
        config="results/{exp}/kdm-s{seed}/config.json",
        snapshots=directory("results/{exp}/kdm-s{seed}/snapshots"),
        losses="results/{exp}/kdm-s{seed}/train.csv",
        loss_curve=report(
            "results/{exp}/kdm-s{seed}/loss.png",
            caption="../report/student_loss.rst",
            category="{exp}",
            subcategory="training",
            labels={"model": "kdm", "seed": "{seed}", "figure": "loss curve"},
        ),
        spectrum=report(
            "results/{exp}/kdm-s{seed}/spectrum.png",
            caption="../report/spectrum.rst",
            category="{exp}",
            subcategory="training",
            labels={"model": "kdm", "seed": "{seed}", "figure": "Koopman spectrum"},
        ),
    log:
        "logs/{exp}/train-kdm-s{seed}.log",
    priority: PRIORITY["train_kdm"]
    conda:
        "../envs/kdm.yaml"
    threads: train_threads
    resources:
        gpu=gpus("kdm"),
        nodes=1,  # torchrun --standalone: all of a job's GPUs on one node
    params:
        kdm=section("kdm"),
        snapshot_every=section("snapshots.every"),
        launch=launch("kdm"),  # torchrun when it trains on several GPUs
        point="",  # a sweep point's: workflow/rules/sweeps.smk
    shell:
        "{params.launch} train {wildcards.exp} kdm {wildcards.seed}{params.point}"


rule train_kd:
    input:
        store="results/{exp}/store",
    output:
        model="results/{exp}/kd-s{seed}/model.pt",
        config="results/{exp}/kd-s{seed}/config.json",
        snapshots=directory("results/{exp}/kd-s{seed}/snapshots"),
        losses="results/{exp}/kd-s{seed}/train.csv",
        loss_curve=report(
            "results/{exp}/kd-s{seed}/loss.png",
            caption="../report/student_loss.rst",
            category="{exp}",
            subcategory="training",
            labels={"model": "kd", "seed": "{seed}", "figure": "loss curve"},
        ),
    log:
        "logs/{exp}/train-kd-s{seed}.log",
    priority: PRIORITY["train_kd"]
    conda:
        "../envs/kdm.yaml"
    threads: train_threads
    resources:
        gpu=gpus("kd"),
        nodes=1,
    params:
        kd=section("kd"),
        snapshot_every=section("snapshots.every"),
        launch=launch("kd"),
        point="",
    shell:
        "{params.launch} train {wildcards.exp} kd {wildcards.seed}{params.point}"
