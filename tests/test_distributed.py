"""Ray scale-out: same vectors and LOTO rows as one process, the CLI flags, and no Ray needed by the core.

One local Ray (2 CPUs, 127.0.0.1 only) serves the whole module; no external cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from benchroute.cli.commands import app
from benchroute.data import load_with_embeddings
from benchroute.data.benchmark import write_benchmark
from benchroute.embed import Embedder, EmbeddingCache, text_hash
from benchroute.experiments.distributed import MIB, RayLOTORunner, start_ray
from benchroute.experiments.evaluate import LOTOEvaluator
from benchroute.files import jsonable
from benchroute.router.estimator import Router
from synthetic import tiny_benchmark

SMALL_MODEL = "all-MiniLM-L6-v2"
TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    """ray.init(num_cpus=2) through benchroute's own start-up (quiet, loopback only), shut down at the end."""
    import ray

    assert start_ray(num_cpus=2, object_store_memory=512 * MIB)
    yield ray
    ray.shutdown()


def _as_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as results.json stores them (NaN -> null), so two runs compare field by field."""
    return json.loads(json.dumps(jsonable(rows), allow_nan=False))


def test_ray_loto_rows_equal_the_serial_rows(ray_local: Any) -> None:
    bench = tiny_benchmark()

    def router() -> Router:
        return Router(alphas=(0.0, 0.1, 0.3), repeats=3, blend_ks=(5, 10, 20), draws=2000, seed=3)

    kwargs: dict[str, Any] = {
        "alphas": (0.0, 0.1, 0.3),
        "repeats": 2,
        "tasks": [4, 0, 2, 5],
        "candidates": np.array([True, True, False, True]),
    }
    serial = LOTOEvaluator(bench, router()).run(**kwargs)
    advanced: list[int] = []
    on_ray = LOTOEvaluator(bench, router()).run(**kwargs, runner=RayLOTORunner(), progress=advanced.append)
    assert advanced == [1, 1, 1, 1]
    assert len(on_ray) == len(serial) > 0
    for a, b in zip(_as_json(serial), _as_json(on_ray), strict=True):
        assert a == b
    assert on_ray[0]["task"] == "t4"  # the order asked for, not the order of completion


def test_cli_ray_embedding_is_bit_identical_and_ray_loto_rows_equal(
    ray_local: Any,
    minilm_bench,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """`embed --ray` then `experiment loto --ray` on 4 tasks x 15 items, against one process."""
    sub = minilm_bench.select(tasks=minilm_bench.tasks[:4])
    keep = np.concatenate(
        [np.arange(sub.task_slice(t).start, sub.task_slice(t).start + 15) for t in sub.tasks]
    )
    items = sub.items.iloc[keep].reset_index(drop=True)
    scores = pd.DataFrame(
        [
            (t, i, m, float(sub.scores[r, j]))
            for r, t, i in zip(keep, items.task, items.item_id, strict=True)
            for j, m in enumerate(sub.models)
        ],
        columns=["task", "item_id", "model", "score"],
    )
    bench_dir = write_benchmark(tmp_path / "bench", items, scores, pd.DataFrame({"model": sub.models}))
    texts = list(items.input)
    one = Embedder(SMALL_MODEL, cache=tmp_path / "one.sqlite", commit_every=16)
    # both caches already hold the same 10 vectors: only the other 50 (4 chunks) may be dispatched
    seed = one.encode_uncached(texts[:10])
    one.store(texts[:10], seed)
    with EmbeddingCache(tmp_path / "ray.sqlite") as cache:
        cache.put_many(one.model_id, [text_hash(t) for t in texts[:10]], seed)
    expected = one.encode(texts)
    runner = CliRunner()

    def ok(args: list[str]) -> str:
        result = runner.invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    embed = [
        "embed",
        str(bench_dir),
        "--ray",
        "--model",
        SMALL_MODEL,
        "--cache",
        str(tmp_path / "ray.sqlite"),
    ]
    out = ok([*embed, "--commit-every", "16"])
    assert "60 inputs, 50 newly embedded" in out and "Ray: 2 CPUs (local)" in out
    with EmbeddingCache(tmp_path / "ray.sqlite") as cache:
        assert cache.count(one.model_id) == 60
        stored = cache.get_many(one.model_id, [text_hash(t) for t in texts])
    got = np.stack([stored[text_hash(t)] for t in texts])
    # the workers encode the same longest-first chunks as one process: bit-identical, not just close
    assert got.dtype == np.float32 and np.array_equal(got, expected)
    assert "Ray:" not in ok(embed)  # nothing left to embed: no Ray started

    ok(
        [
            "experiment",
            "loto",
            str(bench_dir),
            "--ray",
            "--model",
            SMALL_MODEL,
            "--cache",
            str(tmp_path / "ray.sqlite"),
            "--repeats",
            "2",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    bench = load_with_embeddings(str(bench_dir), SMALL_MODEL, tmp_path / "ray.sqlite")
    serial = LOTOEvaluator(bench, Router(repeats=2, embedding_model=SMALL_MODEL)).run()
    assert results["per_task"] == _as_json(serial)
    bad = runner.invoke(app, ["embed", str(bench_dir), "--address", "127.0.0.1:6379"])
    assert bad.exit_code != 0 and "only used with --ray" in str(bad.exception)


def test_core_works_when_ray_cannot_be_imported(tmp_path: Path) -> None:
    """A fresh interpreter where ``import ray`` fails: the package, a Router, and a one-line CLI error."""
    code = f"""
import sys
sys.modules["ray"] = None  # import ray -> ImportError
sys.path.insert(0, {str(TESTS)!r})
import benchroute, benchroute.cli.commands, benchroute.experiments.distributed
from benchroute.router.estimator import Router
from synthetic import tiny_benchmark
bench = tiny_benchmark()
router = Router(repeats=2, draws=500).fit(bench.select(tasks=bench.tasks[:-1]))
rec = router.recommend(bench.embeddings[bench.task_slice(bench.tasks[-1])])
assert rec.chosen in bench.models, rec.chosen
assert sys.modules["ray"] is None
print("core ok", rec.chosen)
sys.argv = ["benchroute", "embed", "llmrouter", "--ray", "--model", "all-MiniLM-L6-v2",
            "--cache", {str(tmp_path / "c.sqlite")!r}]
benchroute.cli.commands.main()
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert "core ok m" in proc.stdout, proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert "Ray is not installed" in proc.stderr and "pip install 'benchroute[ray]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_ray_extra_pulls_no_torch() -> None:
    """The torch==2.13.0 pin stays the only torch: Ray (with its data extra) requires none."""
    from importlib.metadata import requires, version

    assert not [r for r in requires("ray") or [] if r.lower().startswith("torch")]
    assert version("torch").startswith("2.13.0")
