"""A benchmark with its embeddings attached: bundled packs first, then the cache, then the model."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from benchroute.data.benchmark import Benchmark, load_benchmark

#: ``embed_missing(embedder, inputs, name)`` embeds what the cache lacks (the CLI passes one with a
#: progress bar, or one that runs on Ray); the default encodes in this process, silently.
EmbedMissing = Callable[[Any, list[str], str], Any]


def load_with_embeddings(
    path: str | os.PathLike[str],
    model: str = "all-mpnet-base-v2",
    cache: str | os.PathLike[str] | None = None,
    drop_incomplete: bool = False,
    embed_missing: EmbedMissing | None = None,
) -> Benchmark:
    """Load a benchmark (a directory or a bundled name) and attach its embeddings."""
    from benchroute.embed import Embedder, import_bundled_packs

    bench = load_benchmark(path, drop_incomplete=drop_incomplete)
    embedder = Embedder(model, cache=cache)
    inputs = bench.inputs
    if embedder.missing(inputs):
        import_bundled_packs(embedder)
        if embed_missing is not None and embedder.missing(inputs):
            embed_missing(embedder, inputs, bench.name)
    return bench.with_embeddings(embedder.encode(inputs))
