"""Serving load test: a bounded loopback run against POST /v1/route, plus the router's own overhead.

1. Starts ``benchroute serve`` (create_app + uvicorn, auth on) in a separate process on 127.0.0.1.
2. Sends ``--requests`` single-query /v1/route requests, ``--concurrency`` in flight, with one
   httpx.AsyncClient; reports req/s, p50/p99 latency and the error count (target: 0 errors). By
   default every query is distinct, so every request pays for its embedding (the server micro-batches
   concurrent queries); ``--distinct N`` cycles N queries so the in-memory LRU answers the repeats.
3. Router overhead excluding embedding: ``router.predictor_.predict_proba`` on one precomputed
   embedding + argmax, timed per query in-process (target p99 < 25 ms), for the served router and
   for a synthetic store the size of openllm_v2 (67,873 x 768, 78 models).

    python benchmarks/bench_serve.py [--router DIR] [--requests 2000] [--concurrency 32] [--distinct N]

Without ``--router`` a small demo router (3 tasks x 15 items x 3 models, all-MiniLM-L6-v2) is fitted
in a temporary directory. Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

TOPICS = {
    "arithmetic": "What is {a} plus {b}? Compute the sum of the integers {a} and {b}.",
    "geography": "Trivia: which country is the city number {a} on list {b} located in?",
    "coding": "Write a Python function named f{a}_{b} that sorts a list of {a} numbers in {b} passes.",
}


def _queries(n: int) -> list[str]:
    templates = list(TOPICS.values())
    return [templates[i % 3].format(a=i, b=(7 * i) % 101) for i in range(n)]


def build_demo_router(out: Path) -> Path:
    """The test suite's tiny router: each model is right only on its own task."""
    import pandas as pd

    from benchroute.data.benchmark import load_benchmark, write_benchmark
    from benchroute.router.estimator import Router

    models = ["math-llm", "trivia-llm", "code-llm"]
    items, scores = [], []
    for t, (task, tmpl) in enumerate(TOPICS.items()):
        for i in range(15):
            items.append({"task": task, "item_id": str(i), "input": tmpl.format(a=1000 + i, b=i)})
            for j, m in enumerate(models):
                scores.append({"task": task, "item_id": str(i), "model": m, "score": int(j == t)})
    write_benchmark(out / "bench", pd.DataFrame(items), pd.DataFrame(scores))
    bench = load_benchmark(out / "bench")
    Router(embedding_model="all-MiniLM-L6-v2", repeats=2, alphas=(0.0, 0.1)).fit(bench).save(out / "router")
    return out / "router"


def run_server(router_dir: str, port: int) -> None:
    """Child process: serve the router on 127.0.0.1:port with auth (key in $BENCH_SERVE_KEY)."""
    import uvicorn

    from benchroute.router.estimator import Router
    from benchroute.server.app import create_app, tune_for_serving
    from benchroute.server.config import parse_config

    tune_for_serving()
    config = parse_config(
        {
            "auth": {"keys_env": "BENCH_SERVE_KEY"},
            "limits": {"max_concurrency": 256},
            "embedding": {"batch_size": 64},
        },
        "bench",
    )
    app = create_app(Router.load(router_dir), config)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load_test(url: str, key: str, queries: list[str], n: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    next_i = 0
    headers = {"authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120) as client:

        async def worker() -> None:
            nonlocal next_i, errors
            while next_i < n:
                i = next_i
                next_i += 1
                t = time.perf_counter()
                try:
                    r = await client.post("/v1/route", json={"input": queries[i % len(queries)]})
                    ok = r.status_code == 200 and len(r.json()["data"]) == 1
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {
        "n": n,
        "wall_s": wall,
        "rps": n / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        "errors": errors,
    }


def _overhead(predictor: object, X: np.ndarray, reps: int) -> tuple[float, float]:
    """p50, p99 (ms) of predict_proba on one embedding + argmax."""
    times = []
    for i in range(reps):
        x = X[i % len(X)][None, :]
        t = time.perf_counter()
        g = predictor.predict_proba(x)  # type: ignore[attr-defined]
        int(np.argmax(g[0]))
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


class _RouteCall:
    """``router.route`` on a precomputed embedding, shaped like a predictor for :func:`_overhead`."""

    def __init__(self, router: object) -> None:
        self.router = router

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        d = self.router.route(x)[0]  # type: ignore[attr-defined]
        return np.array([list(d.per_model.values())])


def router_overhead(router_dir: str, queries: list[str], reps: int) -> dict[str, tuple[float, float]]:
    from benchroute.embed import Embedder
    from benchroute.router.estimator import Router
    from benchroute.server.app import tune_for_serving

    tune_for_serving()
    router = Router.load(router_dir)
    X = Embedder(router.embedding_model, cache=False).encode_uncached(queries[:200])
    out = {}
    for label, pred in (
        ("predict_proba + argmax", router.predictor_),
        ("full router.route call", _RouteCall(router)),
    ):
        _overhead(pred, X, 20)  # warm up
        out[label] = _overhead(pred, X, reps)
    return out


def synthetic_overhead(n: int, dim: int, models: int, reps: int) -> dict[str, tuple[float, float]]:
    """kNN on an openllm_v2-sized random store, one query at a time, with one OpenMP thread per
    search (as ``serve`` runs it) and with one per CPU (FAISS' default)."""
    import faiss

    from benchroute.method.predictors import KNNCorrectness

    rng = np.random.default_rng(0)
    store = rng.standard_normal((n, dim)).astype(np.float32)
    Y = (rng.random((n, models)) < 0.5).astype(np.float32)
    knn = KNNCorrectness(k=5).fit(store, Y)
    X = rng.standard_normal((256, dim)).astype(np.float32)
    out = {}
    cpus = os.cpu_count() or 1
    for label, threads in (
        ("1 FAISS thread (as served)", 1),
        (f"{cpus} FAISS threads (FAISS default)", cpus),
    ):
        faiss.omp_set_num_threads(threads)
        _overhead(knn, X, 20)
        out[label] = _overhead(knn, X, reps)
    faiss.omp_set_num_threads(1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--router", help="a saved router directory (default: fit the small demo router)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--distinct", type=int, default=0, help="distinct queries (default: one per request)")
    ap.add_argument("--overhead-reps", type=int, default=2000)
    ap.add_argument("--no-synthetic", action="store_true", help="skip the openllm_v2-sized overhead run")
    ap.add_argument("--serve-only", nargs=2, metavar=("ROUTER_DIR", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_only:
        run_server(args.serve_only[0], int(args.serve_only[1]))
        return

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("BENCHROUTE_CACHE", str(Path(tmp) / "embeddings.sqlite"))
        router_dir = args.router or str(build_demo_router(Path(tmp)))
        queries = _queries(args.distinct or args.requests)
        key = secrets.token_urlsafe(24)
        port = _free_port()
        env = {**os.environ, "BENCH_SERVE_KEY": key}
        proc = subprocess.Popen([sys.executable, __file__, "--serve-only", router_dir, str(port)], env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            res = asyncio.run(load_test(url, key, queries, args.requests, args.concurrency))
            metrics = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {key}"}).text
        finally:
            proc.terminate()
            proc.wait(30)
        stats = {
            ln.split(" ")[0]: float(ln.split(" ")[1])
            for ln in metrics.splitlines()
            if ln.startswith("benchroute_embed")
        }
        print(
            f"router {args.router or 'demo (3 tasks x 15 items x 3 models, all-MiniLM-L6-v2)'}; "
            f"{os.cpu_count()} CPUs"
        )
        print(
            f"/v1/route: {res['n']} requests, {args.concurrency} in flight, {len(queries)} distinct queries"
        )
        print(
            f"  {res['rps']:.1f} req/s, p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, "
            f"max {res['max_ms']:.1f} ms, errors {res['errors']} (target 0), wall {res['wall_s']:.1f} s"
        )
        batches = stats.get("benchroute_embedding_batches_total", 0)
        texts = stats.get("benchroute_embedded_texts_total", 0)
        print(
            f"  embedding: {texts:.0f} texts in {batches:.0f} batches "
            f"({texts / max(batches, 1):.1f} per batch), "
            f"{stats.get('benchroute_embedding_cache_hits_total', 0):.0f} LRU hits"
        )
        print("router overhead excl. embedding, served router, one precomputed query at a time:")
        for label, (p50, p99) in router_overhead(router_dir, queries, args.overhead_reps).items():
            print(f"  {label:36s} p50 {p50:.3f} ms, p99 {p99:.3f} ms (target p99 < 25 ms)")
    if not args.no_synthetic:
        print("router overhead excl. embedding (kNN k=5, synthetic 67,873 x 768 store, 78 models):")
        for label, (p50, p99) in synthetic_overhead(67_873, 768, 78, args.overhead_reps).items():
            print(f"  {label:36s} p50 {p50:.3f} ms, p99 {p99:.3f} ms (target p99 < 25 ms)")


if __name__ == "__main__":
    main()
