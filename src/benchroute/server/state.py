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

from benchroute.server.breaker import CircuitBreaker
from benchroute.server.config import ResolvedConfig, ServeConfig
from benchroute.server.embedding import EmbeddingService
from benchroute.server.metrics import Metrics
from benchroute.server.sessions import RoutingSession, SessionStore


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
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)  # per configured model
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)  # USD per Mtok in, out
    sessions: SessionStore[RoutingSession] = field(default_factory=lambda: SessionStore(10_000, 3600.0))

    def cost_usd(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        price = self.prices.get(model)
        if price is None:
            return None
        return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6

    def best_on_average(self, candidates: Sequence[str]) -> str:
        """The candidate with the highest mean accuracy over the benchmark's tasks."""
        models = self.router.models_
        idx = [models.index(c) for c in candidates]
        return str(models[idx[int(np.argmax(self.bma_scores[idx]))]])


def model_prices(router: Any, config: ServeConfig) -> dict[str, tuple[float, float]]:
    """USD per million tokens (in, out) of each configured model: serve.yaml's ``usd_per_mtok_in`` /
    ``usd_per_mtok_out``, else the router's price from models.csv (the mean of its in and out price,
    for both). Models without a known price are left out (no cost is reported for them)."""
    out: dict[str, tuple[float, float]] = {}
    per_mtok = getattr(router, "cost_unit_", None) == "usd_per_mtok"
    models = list(router.models_)
    for name, up in config.models.items():
        known = float(router.cost_[models.index(name)]) if per_mtok and name in models else float("nan")
        p_in = up.usd_per_mtok_in if up.usd_per_mtok_in is not None else known
        p_out = up.usd_per_mtok_out if up.usd_per_mtok_out is not None else known
        if np.isfinite(p_in) and np.isfinite(p_out):
            out[name] = (p_in, p_out)
    return out


__all__ = ["AppState", "model_prices"]
