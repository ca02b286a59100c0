"""Benchmarks: the data model, loading and validation, writing, importers (adapters/) and the bundled
datasets (datasets/). Knows nothing of routing."""

from benchroute.data.benchmark import (
    BUNDLED,
    DEFAULT_BENCHMARK,
    Benchmark,
    bundled_path,
    load_benchmark,
    loto_figures,
    write_benchmark,
)
from benchroute.data.loading import load_with_embeddings

__all__ = [
    "BUNDLED",
    "DEFAULT_BENCHMARK",
    "Benchmark",
    "bundled_path",
    "load_benchmark",
    "load_with_embeddings",
    "loto_figures",
    "write_benchmark",
]
