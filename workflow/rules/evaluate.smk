# Evaluation takes every core so that its speed measurement runs alone.


rule evaluate_teacher:
    input:
        inputs(lambda wc: dag.evaluate_teacher(wc.exp)),
    output:
        files(dag.evaluate_teacher("{exp}").outputs),
    params:
        declared=declared_params(lambda wc: dag.evaluate_teacher(wc.exp)),
    log:
        dag.evaluate_teacher("{exp}").log,
    threads: workflow.cores
    shell:
        dag.evaluate_teacher("{wildcards.exp}").cmd


rule evaluate_student:
    input:
        inputs(lambda wc: dag.evaluate_student(wc.exp, wc.model, wc.seed)),
    output:
        files(dag.evaluate_student("{exp}", "{model}", "{seed}").outputs),
    params:
        declared=declared_params(lambda wc: dag.evaluate_student(wc.exp, wc.model, wc.seed)),
    log:
        dag.evaluate_student("{exp}", "{model}", "{seed}").log,
    threads: workflow.cores
    shell:
        dag.evaluate_student("{wildcards.exp}", "{wildcards.model}", "{wildcards.seed}").cmd
