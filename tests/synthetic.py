"""Synthetic benchmarks shared by tests: small, seeded, with a known routing signal."""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchroute.data.benchmark import Benchmark


def tiny_benchmark(
    n_groups: int = 3, per_group: int = 2, per_task: int = 25, prices: bool = True, seed: int = 0
) -> Benchmark:
    """Synthetic benchmark with routing signal: tasks come in groups of nearby embedding clusters.

    Models m0..m{G-1} are cheap specialists (accuracy .85 on their own group's tasks, .3 elsewhere);
    the last model is large and expensive (.7 everywhere). A held-out task's neighbours are its
    group siblings, so the router can find the cheap specialist that beats the largest model.
    """
    rng = np.random.default_rng(seed)
    n_tasks, n_models = n_groups * per_group, n_groups + 1
    tasks = [f"t{d}" for d in range(n_tasks)]
    ti = np.repeat(np.arange(n_tasks), per_task)
    group = np.arange(n_tasks) // per_group
    centres = 3.0 * rng.normal(size=(n_groups, 12))[group] + 0.5 * rng.normal(size=(n_tasks, 12))
    emb = (centres[ti] + 0.5 * rng.normal(size=(len(ti), 12))).astype(np.float32)
    rate = np.full((n_tasks, n_models), 0.3)
    rate[np.arange(n_tasks), group] = 0.85
    rate[:, -1] = 0.7
    scores = (rng.random((len(ti), n_models)) < rate[ti]).astype(float)
    models = [f"m{j}" for j in range(n_models)]
    size = np.array([7.0 + j for j in range(n_groups)] + [70.0])
    price = size / 10 if prices else np.full(n_models, np.nan)
    info = pd.DataFrame(
        {"params_b": size, "usd_per_mtok_in": price, "usd_per_mtok_out": price},
        index=pd.Index(models, name="model"),
    )
    items = pd.DataFrame(
        {
            "task": [tasks[d] for d in ti],
            "item_id": [str(i) for i in range(len(ti))],
            "input": [f"q{i}" for i in range(len(ti))],
        }
    )
    task_info = pd.DataFrame(
        {"metric": "acc", "threshold": np.nan, "group": ""}, index=pd.Index(tasks, name="task")
    )
    return Benchmark(
        name="tiny",
        tasks=tasks,
        items=items,
        models=models,
        model_info=info,
        scores=scores,
        thresholds=dict.fromkeys(tasks),
        task_info=task_info,
        loglik=None,
        cost=None,
        embeddings=emb,
    )
