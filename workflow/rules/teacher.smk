# The teacher: trained here, or converted once from EDM's pickles or diffusers.


rule teacher:
    output:
        model="results/{exp}/teacher/model.pt",
        config="results/{exp}/teacher/config.json",
        losses="results/{exp}/teacher/train.csv",
        loss_curve=report(
            "results/{exp}/teacher/loss.png",
            caption="../report/teacher_loss.rst",
            category="{exp}",
            subcategory="training",
            labels={"model": "teacher", "seed": "-", "figure": "loss curve"},
        ),
    log:
        "logs/{exp}/teacher.log",
    priority: PRIORITY["teacher"]
    conda:
        "../envs/kdm.yaml"
    threads: train_threads
    resources:
        gpu=gpus("teacher"),
        nodes=1,  # torchrun --standalone: all of a job's GPUs on one node
    params:
        data=section("data"),
        teacher=section("teacher"),
        launch=launch("teacher"),  # torchrun when it trains on several GPUs
    shell:
        "{params.launch} teacher {wildcards.exp}"
