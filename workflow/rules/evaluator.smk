# The evaluator of image experiments: a classifier trained on the real images (its features for FID, KID,
# precision and recall), or the real images' Inception statistics (FID against them, EDM's protocol).


rule classifier:
    output:
        model="results/{exp}/classifier/model.pt",
        config="results/{exp}/classifier/config.json",
        metrics="results/{exp}/classifier/metrics.json",
        losses="results/{exp}/classifier/train.csv",
        loss_curve=report(
            "results/{exp}/classifier/loss.png",
            caption="../report/classifier_loss.rst",
            category="{exp}",
            subcategory="training",
            labels={"model": "classifier", "seed": "-", "figure": "loss curve"},
        ),
    log:
        "logs/{exp}/classifier.log",
    conda:
        "../envs/kdm.yaml"
    threads: train_threads
    params:
        data=section("data"),
        classifier=section("classifier"),
    shell:
        "python -m kdm classifier {wildcards.exp}"


rule reference:
    output:
        stats="results/{exp}/reference/stats.npz",
    log:
        "logs/{exp}/reference.log",
    conda:
        "../envs/kdm.yaml"
    threads: all_cores
    params:
        data=section("data"),
        extractor=section("evaluate.extractor"),
    shell:
        "python -m kdm reference {wildcards.exp}"
