"""Evaluation: the evaluators a run and the `evaluate` command share (built from
config.evals), the opener of a finished run, the evaluation cache and ensembles."""
