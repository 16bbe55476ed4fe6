# Evaluations: the evaluator's floor on real images (classifier experiments), the teacher (whose samples
# keep the evaluation noise), and each student on that noise. They take every core so that speed
# measurements run alone.


rule evaluate_data:
    input:
        unpack(evaluator),
    output:
        resampled="results/{exp}/eval/data-resampled/metrics.json",
        halves="results/{exp}/eval/data-halves/metrics.json",
        grid="results/{exp}/eval/data-resampled/samples.png",
    log:
        "logs/{exp}/evaluate-data.log",
    conda:
        "../envs/kdm.yaml"
    threads: workflow.cores
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
        grid="results/{exp}/eval/teacher/samples.png",
    log:
        "logs/{exp}/evaluate-teacher.log",
    conda:
        "../envs/kdm.yaml"
    threads: workflow.cores
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
        grid="results/{exp}/eval/{model}-s{seed}/samples.png",
        analysis="results/{exp}/eval/{model}-s{seed}/analysis.png",
    log:
        "logs/{exp}/evaluate-{model}-s{seed}.log",
    wildcard_constraints:
        model="|".join(dag.STUDENTS),
    conda:
        "../envs/kdm.yaml"
    threads: workflow.cores
    params:
        data=section("data"),
        sampler=section("sampler"),
        evaluate=section("evaluate"),
    shell:
        "python -m kdm evaluate {wildcards.exp} {wildcards.model} {wildcards.seed}"


rule curve:
    input:
        unpack(evaluator),
        model="results/{exp}/{model}-s{seed}/model.pt",
        snapshots="results/{exp}/{model}-s{seed}/snapshots",
        teacher_samples="results/{exp}/eval/teacher/samples",
    output:
        csv="results/{exp}/eval/{model}-s{seed}/curve.csv",
        png="results/{exp}/eval/{model}-s{seed}/curve.png",
    log:
        "logs/{exp}/curve-{model}-s{seed}.log",
    wildcard_constraints:
        model="|".join(dag.STUDENTS),
    conda:
        "../envs/kdm.yaml"
    threads: workflow.cores
    params:
        data=section("data"),
        evaluate=section("evaluate"),
        snapshots=section("snapshots"),
    shell:
        "python -m kdm curve {wildcards.exp} {wildcards.model} {wildcards.seed}"
