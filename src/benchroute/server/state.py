"""What every request handler shares: the router, the resolved config, metrics, the embedding
service and the upstream HTTP client (created in the app's lifespan)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from benchroute.server.config import ResolvedConfig, ServeConfig
from benchroute.server.embedding import EmbeddingService
from benchroute.server.metrics import Metrics


@dataclass
class AppState:
    router: Any
    config: ServeConfig
    resolved: ResolvedConfig
    metrics: Metrics
    embeddings: EmbeddingService
    semaphore: asyncio.Semaphore | None = None
    client: httpx.AsyncClient | None = None
    started: int = field(default_factory=lambda: int(time.time()))
    bma_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def best_on_average(self, candidates: Sequence[str]) -> str:
        """The candidate with the highest mean accuracy over the benchmark's tasks."""
        models = self.router.models_
        idx = [models.index(c) for c in candidates]
        return str(models[idx[int(np.argmax(self.bma_scores[idx]))]])


__all__ = ["AppState"]
