"""Stage entry points, one module per stage, each with `run(stage, P)`: `stage` is the kdm.dag.Stage
(its paths and wildcard values) and `P` the params sections it declares, keyed by section name."""
