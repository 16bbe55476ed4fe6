rule table:
    input:
        dag.table(config).deps,
    output:
        dag.table(config).outs,
    log:
        dag.table(config).log,
    shell:
        dag.table(config).cmd
