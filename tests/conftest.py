"""Shared fixtures.

Two kinds of data, so that the whole suite stays fast on a shared CPU:

* ``synthetic`` / ``make_synthetic`` (a factory): clustered random embeddings with random 0/1 correctness,
  for the unit tests of predictors, neighbours, the fold engine and scores (milliseconds).
* ``minilm_bench``: a real slice of the bundled openllm_v2 benchmark (a few short BBH tasks, a
  seeded subsample of their items) embedded with the small all-MiniLM-L6-v2 model, for the Router
  tests. The embeddings go to an isolated SQLite cache (``BENCHROUTE_CACHE`` is pointed at it for
  the session), kept in pytest's cache directory so only the first run pays for embedding.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

# ------------------------------------------------------------------------------------- synthetic


@dataclass(frozen=True)
class Synthetic:
    """Embeddings of ``n_tasks`` clusters, per-item correctness of ``n_models`` models."""

    X: np.ndarray  # n x dim, float32, not normalized
    Y: np.ndarray  # n x M, float32 0/1
    task_index: np.ndarray  # n, int, contiguous per task

    @property
    def n_tasks(self) -> int:
        return int(self.task_index.max()) + 1

    def members(self, d: int) -> np.ndarray:
        return np.flatnonzero(self.task_index == d)


def make_synthetic(
    n_tasks: int = 5, per_task: int = 30, dim: int = 16, n_models: int = 3, spread: float = 0.8, seed: int = 0
) -> Synthetic:
    """Tasks are Gaussian clusters around random centres; each model has its own accuracy per task."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_tasks, dim))
    X = np.concatenate([c + spread * rng.normal(size=(per_task, dim)) for c in centres]).astype(np.float32)
    task_index = np.repeat(np.arange(n_tasks), per_task)
    rate = rng.uniform(0.2, 0.8, size=(n_tasks, n_models))[task_index]
    Y = (rng.random((len(X), n_models)) < rate).astype(np.float32)
    return Synthetic(X, Y, task_index)


@pytest.fixture
def synthetic() -> Synthetic:
    """The default synthetic data: 5 tasks x 30 items, 16-d, 3 models."""
    return make_synthetic()


@pytest.fixture(name="make_synthetic")
def make_synthetic_fixture():  # type: ignore[no-untyped-def]
    """:func:`make_synthetic` itself, for tests that need other sizes or seeds."""
    return make_synthetic


# ------------------------------------------------------------------------- real benchmark slice

#: Short BBH tasks (short inputs embed fastest); the last one is the "new task" of the Router tests.
ROUTER_TASKS = (
    "bbh_boolean_expressions",
    "bbh_sports_understanding",
    "bbh_object_counting",
    "bbh_hyperbaton",
    "bbh_web_of_lies",
    "bbh_navigate",
)
HELD_OUT_TASK = "bbh_navigate"
#: Items kept per task: 6 x 100 texts take ~20 s to embed with MiniLM on a loaded 2-core CPU.
ITEMS_PER_TASK = 100
SMALL_MODEL = "all-MiniLM-L6-v2"
#: A query that is in no benchmark; embedded with the benchmark so routers find it in the cache.
NEW_QUERY = 'Is the following sentence plausible? "The goalkeeper threw a touchdown pass."'


def subsample(bench, per_task: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """A Benchmark with at most ``per_task`` seeded random items of each task (task order kept)."""
    rng = np.random.default_rng(seed)
    rows = []
    for task in bench.tasks:
        s = bench.task_slice(task)
        idx = np.arange(s.start, s.stop)
        rows.append(np.sort(rng.choice(idx, min(per_task, len(idx)), replace=False)))
    r = np.concatenate(rows)

    def take(matrix: np.ndarray | None) -> np.ndarray | None:
        return None if matrix is None else matrix[r]

    return replace(
        bench,
        items=bench.items.iloc[r].reset_index(drop=True),
        scores=bench.scores[r],
        loglik=take(bench.loglik),
        cost=take(bench.cost),
        embeddings=take(bench.embeddings),
    )


@pytest.fixture(scope="session")
def embedding_cache(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """An isolated embedding cache file; ``BENCHROUTE_CACHE`` points at it for the whole session.

    Routers embed texts through the default cache, so the variable must stay set while they run.
    """
    cache = getattr(request.config, "cache", None)
    directory = (
        Path(cache.mkdir("benchroute-embeddings")) if cache is not None else tmp_path_factory.mktemp("emb")
    )
    path = directory / "embeddings.sqlite"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCHROUTE_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def minilm_bench(embedding_cache: Path):  # type: ignore[no-untyped-def]
    """openllm_v2 restricted to :data:`ROUTER_TASKS`, subsampled, with MiniLM embeddings attached."""
    from benchroute.data.benchmark import load_benchmark
    from benchroute.embed import Embedder

    bench = subsample(load_benchmark("openllm_v2").select(tasks=ROUTER_TASKS), ITEMS_PER_TASK)
    emb = Embedder(SMALL_MODEL, cache=embedding_cache).encode([*bench.inputs, NEW_QUERY])
    return bench.with_embeddings(emb[:-1])


@pytest.fixture(scope="session")
def train_bench(minilm_bench):  # type: ignore[no-untyped-def]
    """Every router task except :data:`HELD_OUT_TASK`."""
    return minilm_bench.select(tasks=[t for t in ROUTER_TASKS if t != HELD_OUT_TASK])


@pytest.fixture(scope="session")
def new_query(minilm_bench) -> str:  # type: ignore[no-untyped-def]
    """A text outside the benchmark (already in the embedding cache)."""
    return NEW_QUERY


@pytest.fixture(scope="session")
def held_out_task() -> str:
    return HELD_OUT_TASK


@pytest.fixture(scope="session")
def held_out(minilm_bench) -> tuple[list[str], np.ndarray]:  # type: ignore[no-untyped-def]
    """(inputs, 0/1 correctness n x M) of the held-out task, in the benchmark's model order."""
    s = minilm_bench.task_slice(HELD_OUT_TASK)
    return minilm_bench.inputs[s], minilm_bench.correct[s].astype(np.float32)


@pytest.fixture(scope="session")
def make_router(train_bench):  # type: ignore[no-untyped-def]
    """Factory of fresh routers fitted on ``train_bench`` (fast settings), for tests that mutate one."""
    from benchroute.router.estimator import Router

    def make(**params):  # type: ignore[no-untyped-def]
        # the paper's S3 + trust rule unless a test asks otherwise (the default blend has its own tests)
        params = {"embedding_model": SMALL_MODEL, "repeats": 2, "score": "S3", **params}
        return Router(**params).fit(train_bench)

    return make


@pytest.fixture(scope="session")
def fitted_router(make_router):  # type: ignore[no-untyped-def]
    """One shared fitted router: use it read-only (recommend, route, save)."""
    return make_router()


@pytest.fixture(scope="module")
def ledger(request: pytest.FixtureRequest, pytestconfig: pytest.Config) -> Iterator[dict[str, Counter]]:
    """Per-class outcome counts of a reliability module, saved for docs/reliability.md when it ends.

    The module names its ledger with a module-level ``LEDGER = "data" | "faults" | "server"``.
    """
    name = request.module.LEDGER
    counts: dict[str, Counter] = {}
    yield counts
    data = {k: dict(v) for k, v in counts.items()}
    cache = getattr(pytestconfig, "cache", None)
    if cache is not None:
        path = Path(cache.mkdir("benchroute-reliability")) / f"{name}.json"
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"\nreliability counts ({name}): {json.dumps(data, sort_keys=True)}")
