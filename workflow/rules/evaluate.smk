# The evaluator (image experiments: a classifier trained on the real images and the evaluator's floor
# on real data, or the real images' Inception statistics) and the evaluations. Evaluations take every core so that speed measurements run alone.


rule classifier:
    output:
        files(dag.classifier("{exp}").outputs),
    params:
        declared=declared_params(lambda wc: dag.classifier(wc.exp)),
    log:
        dag.classifier("{exp}").log,
    threads: TRAIN_THREADS
    shell:
        dag.classifier("{wildcards.exp}").cmd


rule reference:
    output:
        files(dag.reference("{exp}").outputs),
    params:
        declared=declared_params(lambda wc: dag.reference(wc.exp)),
    log:
        dag.reference("{exp}").log,
    threads: workflow.cores
    shell:
        dag.reference("{wildcards.exp}").cmd


rule evaluate_data:
    input:
        inputs(lambda wc: dag.evaluate_data(config, wc.exp)),
    output:
        files(dag.evaluate_data(config, "{exp}").outputs),
    params:
        declared=declared_params(lambda wc: dag.evaluate_data(config, wc.exp)),
    log:
        dag.evaluate_data(config, "{exp}").log,
    threads: workflow.cores
    shell:
        dag.evaluate_data(config, "{wildcards.exp}").cmd


rule evaluate_teacher:
    input:
        inputs(lambda wc: dag.evaluate_teacher(config, wc.exp)),
    output:
        files(dag.evaluate_teacher(config, "{exp}").outputs),
    params:
        declared=declared_params(lambda wc: dag.evaluate_teacher(config, wc.exp)),
    log:
        dag.evaluate_teacher(config, "{exp}").log,
    threads: workflow.cores
    shell:
        dag.evaluate_teacher(config, "{wildcards.exp}").cmd


rule evaluate_student:
    input:
        inputs(lambda wc: dag.evaluate_student(config, wc.exp, wc.model, wc.seed)),
    output:
        files(dag.evaluate_student(config, "{exp}", "{model}", "{seed}").outputs),
    params:
        declared=declared_params(lambda wc: dag.evaluate_student(config, wc.exp, wc.model, wc.seed)),
    log:
        dag.evaluate_student(config, "{exp}", "{model}", "{seed}").log,
    threads: workflow.cores
    shell:
        dag.evaluate_student(config, "{wildcards.exp}", "{wildcards.model}", "{wildcards.seed}").cmd
