"""Embedding throughput: benchroute's cached pipeline vs a bare SentenceTransformer.encode.

Same texts, same model, same process. Cold = empty cache (the pipeline pays hashing, length sorting,
SQLite commits); warm = every vector already cached (the pipeline only reads SQLite).
Targets: cold >= 0.95x the bare encode, warm >= 100x.

    python benchmarks/bench_embed.py [--model all-MiniLM-L6-v2] [--n 512] [--dataset openllm_v2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchroute.data import load_benchmark
from benchroute.embed import Embedder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--dataset", default="openllm_v2")
    ap.add_argument("--n", type=int, default=512, help="number of inputs (a seeded random sample)")
    args = ap.parse_args()

    bench = load_benchmark(args.dataset)
    rng = np.random.default_rng(0)
    texts = list(dict.fromkeys(bench.inputs[i] for i in rng.choice(bench.n_items, args.n, replace=False)))
    with tempfile.TemporaryDirectory() as tmp:
        emb = Embedder(args.model, cache=Path(tmp) / "cache.sqlite")
        st = emb.sentence_transformer
        st.encode(texts[:8])  # warm up the model once, outside every timing

        t = time.perf_counter()
        bare = st.encode(texts, batch_size=emb.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        t_bare = time.perf_counter() - t

        t = time.perf_counter()
        cold = emb.encode(texts)
        t_cold = time.perf_counter() - t

        t = time.perf_counter()
        warm = emb.encode(texts)
        t_warm = time.perf_counter() - t

    assert np.allclose(bare, cold, atol=1e-4), "the pipeline must return the bare model's vectors"
    assert np.array_equal(cold, warm)
    n = len(texts)
    print(f"model {args.model}, {n} {args.dataset} inputs")
    print(f"bare encode        {n / t_bare:9.1f} texts/s ({t_bare:.2f} s)")
    print(f"pipeline, cold     {n / t_cold:9.1f} texts/s ({t_cold:.2f} s)  ratio {t_bare / t_cold:.2f}x (target >= 0.95x)")
    print(f"pipeline, warm     {n / t_warm:9.1f} texts/s ({t_warm:.4f} s)  ratio {t_bare / t_warm:.0f}x (target >= 100x)")


if __name__ == "__main__":
    main()
