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

# ------------------------------------------------------------------------------------- fast loop
#: Tests that took 0.75 s or more (setup included) in `pytest --durations=0` on the 2-core machine
#: (2026-11-30, under load): marked ``slow`` so that ``pytest -m "not slow"`` is the fast loop. The
#: full suite (CI, scripts/test.sh) runs them all.
SLOW_TESTS: frozenset[str] = frozenset(
    {
        "tests/test_active.py::test_active_study_shapes_and_values",
        "tests/test_adapters.py::test_helm_fixture_imports_one_task_and_matches_helm_aggregate",
        "tests/test_adapters.py::test_helm_merges_models_on_shared_instances",
        "tests/test_adapters.py::test_lmeval_fixture_two_models_two_tasks",
        "tests/test_adapters.py::test_table_item_ids_hash_the_input_and_ignore_row_order",
        "tests/test_cli.py::test_embed_fast_path_caches_under_its_own_model_id",
        "tests/test_cli.py::test_experiment_runs_the_papers_router_on_request",
        "tests/test_cli.py::test_fit_recommend_route_round_trip",
        "tests/test_cli.py::test_fit_with_a_chosen_index_saves_it_and_routes_the_same",
        "tests/test_cost.py::test_cost_study_shapes_and_invariants",
        "tests/test_cost.py::test_model_costs_openllm_params_proxy",
        "tests/test_data.py::test_bundled_correctness_figures_match_a_naive_groupby[openllm_v2]",
        "tests/test_data.py::test_bundled_figures[openllm_v2]",
        "tests/test_data.py::test_openllm_v2_matches_provenance",
        "tests/test_distributed.py::test_cli_ray_embedding_is_bit_identical_and_ray_loto_rows_equal",
        "tests/test_distributed.py::test_core_works_when_ray_cannot_be_imported",
        "tests/test_distributed.py::test_ray_loto_rows_equal_the_serial_rows",
        "tests/test_distributed.py::test_the_ray_extra_pulls_no_torch",
        "tests/test_embed.py::test_bf16_fast_path_is_close_deterministic_and_cached_apart",
        "tests/test_embed.py::test_cache_serves_repeats_without_recomputing",
        "tests/test_embed.py::test_default_model_ranks_paraphrase_closer",
        "tests/test_embed.py::test_onnx_path_matches_fp32_and_is_cached_apart",
        "tests/test_embed.py::test_onnx_serving_path_loads_without_torch",
        "tests/test_embed.py::test_pack_round_trip_and_tamper_detection",
        "tests/test_embed.py::test_sigkill_mid_run_resumes_and_matches_uninterrupted",
        "tests/test_embed.py::test_small_model_sanity",
        "tests/test_embed.py::test_truncate_keeps_exactly_the_tokens_the_model_reads",
        "tests/test_embed.py::test_truncate_property",
        "tests/test_evaluate.py::test_loto_is_deterministic_for_a_fixed_seed",
        "tests/test_evaluate.py::test_mlp_variant_study_compares_both_predictors",
        "tests/test_evaluate.py::test_public_router_reproduces_the_harness_on_every_held_out_task",
        "tests/test_evaluate.py::test_run_experiments_all_sections",
        "tests/test_predictors.py::test_faiss_hnsw_recall",
        "tests/test_reliability_data.py::test_dropped_or_renamed_columns",
        "tests/test_reliability_data.py::test_duplicates",
        "tests/test_reliability_data.py::test_mixed_encodings",
        "tests/test_reliability_data.py::test_nan_inf_and_non_numbers",
        "tests/test_reliability_data.py::test_one_megabyte_input",
        "tests/test_reliability_data.py::test_random_byte_flips",
        "tests/test_reliability_data.py::test_random_byte_flips_in_compressed_files",
        "tests/test_reliability_data.py::test_random_cell_values",
        "tests/test_reliability_data.py::test_scores_outside_0_1",
        "tests/test_reliability_data.py::test_truncated_gzip",
        "tests/test_reliability_faults.py::test_inputs_path_traversal_is_read_as_data",
        "tests/test_reliability_faults.py::test_killed_experiment_reruns_to_the_uninterrupted_result",
        "tests/test_reliability_faults.py::test_killed_save_never_loads_a_corrupt_router[Router.save]",
        "tests/test_reliability_faults.py::test_no_pickle_or_code_loading_in_the_package",
        "tests/test_reliability_server.py::test_fuzzed_json_bodies_never_5xx[/v1/chat/completions]",
        "tests/test_reliability_server.py::test_fuzzed_json_bodies_never_5xx[/v1/recommend]",
        "tests/test_reliability_server.py::test_fuzzed_json_bodies_never_5xx[/v1/route]",
        "tests/test_reliability_server.py::test_many_idle_connections",
        "tests/test_reliability_server.py::test_raw_hostile_bodies_never_5xx[/v1/chat/completions]",
        "tests/test_reliability_server.py::test_raw_hostile_bodies_never_5xx[/v1/recommend]",
        "tests/test_reliability_server.py::test_raw_hostile_bodies_never_5xx[/v1/route]",
        "tests/test_reliability_server.py::test_slow_clients_do_not_block_others",
        "tests/test_report.py::test_every_expected_file_is_written",
        "tests/test_server.py::test_metrics_after_requests",
        "tests/test_server.py::test_upstream_down_uses_fallback_else_502",
        "tests/test_server.py::test_upstream_error_or_timeout_falls_back",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid in SLOW_TESTS or item.nodeid.split("[")[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


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
