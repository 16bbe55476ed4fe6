# Sweeps (params.yaml `sweeps:`), outside the default run: `snakemake --cores all sweeps`. A point's students train
# and are evaluated by the experiment's own rules, into the point's folder with its settings (kdm.dag.Point); a
# point equal to the experiment's student is that student (kdm.dag.sweep_runs), so nothing asks for it here.


use rule train_kdm as sweep_train_kdm with:
    output:
        model="results/{exp}/sweeps/{sweep}/{point}/kdm-s{seed}/model.pt",
        config="results/{exp}/sweeps/{sweep}/{point}/kdm-s{seed}/config.json",
        snapshots=directory(
            "results/{exp}/sweeps/{sweep}/{point}/kdm-s{seed}/snapshots"
        ),
        losses="results/{exp}/sweeps/{sweep}/{point}/kdm-s{seed}/train.csv",
        loss_curve="results/{exp}/sweeps/{sweep}/{point}/kdm-s{seed}/loss.png",
        spectrum="results/{exp}/sweeps/{sweep}/{point}/kdm-s{seed}/spectrum.png",
    log:
        "logs/{exp}/train-sweeps/{sweep}/{point}/kdm-s{seed}.log",
    params:
        kdm=point_params("kdm"),
        snapshot_every=section("snapshots.every"),
        launch=launch("kdm"),
        point=point_arg,


use rule train_kd as sweep_train_kd with:
    output:
        model="results/{exp}/sweeps/{sweep}/{point}/kd-s{seed}/model.pt",
        config="results/{exp}/sweeps/{sweep}/{point}/kd-s{seed}/config.json",
        snapshots=directory("results/{exp}/sweeps/{sweep}/{point}/kd-s{seed}/snapshots"),
        losses="results/{exp}/sweeps/{sweep}/{point}/kd-s{seed}/train.csv",
        loss_curve="results/{exp}/sweeps/{sweep}/{point}/kd-s{seed}/loss.png",
    log:
        "logs/{exp}/train-sweeps/{sweep}/{point}/kd-s{seed}.log",
    params:
        kd=point_params("kd"),
        snapshot_every=section("snapshots.every"),
        launch=launch("kd"),
        point=point_arg,


use rule evaluate_student as sweep_evaluate with:
    input:
        unpack(evaluator),
        model="results/{exp}/sweeps/{sweep}/{point}/{model}-s{seed}/model.pt",
        config="results/{exp}/sweeps/{sweep}/{point}/{model}-s{seed}/config.json",
        teacher_samples="results/{exp}/eval/teacher/samples",
        teacher="results/{exp}/teacher/model.pt",
    output:
        metrics="results/{exp}/eval/sweeps/{sweep}/{point}/{model}-s{seed}/metrics.json",
        grid="results/{exp}/eval/sweeps/{sweep}/{point}/{model}-s{seed}/samples.png",
        analysis="results/{exp}/eval/sweeps/{sweep}/{point}/{model}-s{seed}/analysis.png",
        latent="results/{exp}/eval/sweeps/{sweep}/{point}/{model}-s{seed}/latent.png",
    log:
        "logs/{exp}/evaluate-sweeps/{sweep}/{point}/{model}-s{seed}.log",
    params:
        data=section("data"),
        sampler=section("sampler"),
        evaluate=section("evaluate"),
        analysis=section("analysis"),
        point=point_arg,


rule sweep:
    input:
        unpack(lambda wc: dag.sweep_table(config, wc.sweep).deps),
    output:
        csv="results/sweeps/{sweep}.csv",
        md="results/sweeps/{sweep}.md",
        tex="results/sweeps/{sweep}.tex",
        summary="results/sweeps/{sweep}.json",
        figure=report(
            "results/sweeps/{sweep}.png",
            caption="../report/sweep.rst",
            category="sweep {sweep}",
        ),
    log:
        "logs/sweeps/{sweep}.log",
    conda:
        "../envs/kdm.yaml"
    params:
        sweep=lambda wc: config["sweeps"][wc.sweep],
        pairs=lambda wc: config[config["sweeps"][wc.sweep]["experiment"]]["pairs"],
    shell:
        "python -m kdm sweep {wildcards.sweep}"


rule sweeps:
    input:
        [f"results/sweeps/{name}.csv" for name in kdm_config.active_sweeps(config)],
