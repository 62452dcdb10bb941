"""Runs: one execution of a job, with its code snapshot, inputs, params, metrics,
logs, outputs and the Git state of the project. Pipelines run jobs as child runs and
reuse a step whose inputs did not change."""
