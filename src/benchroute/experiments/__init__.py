"""The paper's experiments: the leave-one-task-out evaluator, one module per study, the run that
writes results.json, the report, and Ray distribution. Measures the product through the same
decision function the Router calls."""
