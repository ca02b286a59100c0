"""The method on arrays: neighbours, labels, correctness predictors, the leave-one-task-out fold
engine, the confidence model, the scores, the one decision chain, cost-aware choice and label
suggestion. Nothing here reads files or knows the CLI or HTTP."""
