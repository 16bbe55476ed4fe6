# Evaluations: the evaluator's floor on real images (classifier experiments), the teacher (whose samples
# keep the evaluation noise), and each student on that noise. They take every core so that speed
# measurements run alone.


rule evaluate_data:
    input:
        unpack(evaluator),
    output:
        resampled="results/{exp}/eval/data-resampled/metrics.json",
        halves="results/{exp}/eval/data-halves/metrics.json",
        grid=report(
            "results/{exp}/eval/data-resampled/samples.png",
            caption="../report/data_samples.rst",
            category="{exp}",
            subcategory="samples",
            labels={"model": "data", "seed": "-", "figure": "samples"},
        ),
    log:
        "logs/{exp}/evaluate-data.log",
    conda:
        "../envs/kdm.yaml"
    threads: all_cores
    params:
        data=section("data"),
        evaluate=section("evaluate"),
    shell:
        "python -m kdm evaluate {wildcards.exp} data"


rule evaluate_teacher:
    input:
        unpack(evaluator),
        teacher="results/{exp}/teacher/model.pt",
    output:
        samples=directory("results/{exp}/eval/teacher/samples"),
        metrics="results/{exp}/eval/teacher/metrics.json",
        grid=report(
            "results/{exp}/eval/teacher/samples.png",
            caption="../report/samples.rst",
            category="{exp}",
            subcategory="samples",
            labels={"model": "teacher", "seed": "-", "figure": "samples"},
        ),
    log:
        "logs/{exp}/evaluate-teacher.log",
    conda:
        "../envs/kdm.yaml"
    threads: all_cores
    params:
        data=section("data"),
        sampler=section("sampler"),
        evaluate=section("evaluate"),
    shell:
        "python -m kdm evaluate {wildcards.exp} teacher"


rule evaluate_student:
    input:
        unpack(evaluator),
        model="results/{exp}/{model}-s{seed}/model.pt",
        config="results/{exp}/{model}-s{seed}/config.json",
        teacher_samples="results/{exp}/eval/teacher/samples",
        teacher="results/{exp}/teacher/model.pt",  # timed again beside the student
    output:
        metrics="results/{exp}/eval/{model}-s{seed}/metrics.json",
        grid=report(
            "results/{exp}/eval/{model}-s{seed}/samples.png",
            caption="../report/samples.rst",
            category="{exp}",
            subcategory="samples",
            labels={"model": "{model}", "seed": "{seed}", "figure": "samples"},
        ),
        analysis=report(
            "results/{exp}/eval/{model}-s{seed}/analysis.png",
            caption="../report/analysis.rst",
            category="{exp}",
            subcategory="samples",
            labels={
                "model": "{model}",
                "seed": "{seed}",
                "figure": "beside the teacher",
            },
        ),
        latent=report(
            "results/{exp}/eval/{model}-s{seed}/latent.png",
            caption="../report/latent.rst",
            category="{exp}",
            subcategory="latent proximity",
            labels={
                "model": "{model}",
                "seed": "{seed}",
                "figure": "latent proximity",
            },
        ),
    log:
        "logs/{exp}/evaluate-{model}-s{seed}.log",
    wildcard_constraints:
        model="|".join(dag.STUDENTS),
    conda:
        "../envs/kdm.yaml"
    threads: all_cores
    params:
        data=section("data"),
        sampler=section("sampler"),
        evaluate=section("evaluate"),
        analysis=section("analysis"),
        point="",  # a sweep point's: workflow/rules/sweeps.smk
    shell:
        "python -m kdm evaluate {wildcards.exp} {wildcards.model} {wildcards.seed}{params.point}"


rule curve:
    input:
        unpack(evaluator),
        model="results/{exp}/{model}-s{seed}/model.pt",
        snapshots="results/{exp}/{model}-s{seed}/snapshots",
        teacher_samples="results/{exp}/eval/teacher/samples",
    output:
        csv="results/{exp}/eval/{model}-s{seed}/curve.csv",
        png=report(
            "results/{exp}/eval/{model}-s{seed}/curve.png",
            caption="../report/curve.rst",
            category="{exp}",
            subcategory="snapshot curves",
            labels={
                "model": "{model}",
                "seed": "{seed}",
                "figure": "quality vs iteration",
            },
        ),
    log:
        "logs/{exp}/curve-{model}-s{seed}.log",
    wildcard_constraints:
        model="|".join(dag.STUDENTS),
    conda:
        "../envs/kdm.yaml"
    threads: all_cores
    params:
        data=section("data"),
        evaluate=section("evaluate"),
        snapshots=section("snapshots"),
    shell:
        "python -m kdm curve {wildcards.exp} {wildcards.model} {wildcards.seed}"
