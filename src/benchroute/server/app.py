"""``benchroute serve``: a routing API and an OpenAI-compatible routing proxy (FastAPI + uvicorn).

The app factory. The package is laid out the way FastAPI's "bigger applications" guide lays out an
app: endpoint groups in ``routes/`` (``routing``: /v1/route, /v1/recommend; ``openai``: the proxy,
/v1/chat/completions and /v1/models; ``ops``: /healthz, /readyz, /metrics), shared concerns as
dependencies in ``deps.py`` (app state, auth, request bodies, limits), request schemas in
``schemas.py``, the one error shape in ``errors.py``, the request guard in ``middleware.py``, the
query-embedding service (lanes, routing budget, cancellation, truncation) in ``embedding.py``,
forwarding, fallback and the SSE relay in ``proxy.py``, the upstream circuit breaker in
``breaker.py``, session state in ``sessions.py``, request ids and the access line in ``access.py``,
metrics in ``metrics.py``, serve.yaml in ``config.py`` and uvicorn startup in ``run.py``.
docs/server.md is the reference.

Design choices:

* Query embedding runs on one dedicated worker thread per embedding model; the model loads in the
  background after the server starts listening. Nothing CPU-bound runs on the event loop. A chat
  request whose query cannot start embedding within ``routing.budget_ms`` is answered by the
  best-on-average model instead: routing never makes a request slower than calling that model.
* Overload is rejected, not queued: at most ``limits.max_concurrency`` requests are served at once;
  a request beyond that waits up to ``limits.queue_timeout_s`` (default 0) for a slot, then gets 503
  with ``Retry-After: 1``. A slot is taken only once the whole body has arrived (within
  ``limits.request_timeout_s``, else 408), so slow uploads cannot starve everyone else.
* Every error is OpenAI-style JSON ``{"error": {"message", "type", ...}}``; API keys (ours and the
  upstreams') are never logged nor echoed, and compared in constant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from benchroute import __version__
from benchroute.server.breaker import CircuitBreaker
from benchroute.server.config import ServeConfig, load_config, resolve_config
from benchroute.server.embedding import EmbeddingService
from benchroute.server.errors import install_error_handlers
from benchroute.server.metrics import Metrics, new_metrics
from benchroute.server.middleware import GuardMiddleware
from benchroute.server.routes import openai, ops, routing
from benchroute.server.run import serve, tune_for_serving
from benchroute.server.sessions import SessionStore
from benchroute.server.state import AppState, model_prices

log = logging.getLogger("benchroute.server")

#: Response headers a browser client may read (CORS).
EXPOSED_HEADERS = (
    "x-request-id",
    "x-benchroute-model",
    "x-benchroute-routed-model",
    "x-benchroute-fallback-reason",
    "x-benchroute-routing-fallback",
    "retry-after",
)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Per event loop: the concurrency semaphore, the upstream client, the embedding service."""
    state: AppState = app.state.benchroute
    lim = state.config.limits
    state.semaphore = asyncio.Semaphore(lim.max_concurrency)
    state.client = httpx.AsyncClient(
        timeout=httpx.Timeout(lim.upstream_timeout_s, connect=min(10.0, lim.upstream_timeout_s)),
        limits=httpx.Limits(max_connections=max(16, 2 * lim.max_concurrency), max_keepalive_connections=32),
        follow_redirects=False,
    )
    await state.embeddings.start()
    resolved, auth = state.resolved, state.config.auth
    log.info(
        "benchroute serving %d router models (%d with an upstream), profiles: %s; fallback: %s; auth: %s",
        len(state.router.models_),
        len(resolved.profiles["benchroute"].candidates),
        ", ".join(resolved.profiles) or "-",
        resolved.fallback or "none",
        f"{len(auth.key_bytes)} key(s)" if auth.enabled else "OFF",
    )
    if not auth.enabled:
        log.warning("auth is OFF: anyone who can reach this server (or its reverse proxy) can use it")
    try:
        yield
    finally:
        await state.embeddings.stop()
        await state.client.aclose()


def create_app(router: Any, config: ServeConfig) -> FastAPI:
    """The FastAPI app serving ``router`` as configured (raises ConfigError for a bad config).

    The router must be fitted (``Router.load(dir)``); ``config`` comes from :func:`load_config`.
    """
    resolved = resolve_config(config, router)
    metrics = new_metrics()
    state = AppState(
        router=router,
        config=config,
        resolved=resolved,
        metrics=metrics,
        embeddings=EmbeddingService(
            router.embedding_model,
            config.embedding.batch_size,
            config.embedding.cache_size,
            metrics,
            bulk_batch_size=config.embedding.bulk_batch_size,
            backend=config.embedding.backend,
            threads=config.embedding.threads,
        ),
        bma_scores=np.asarray(router.task_accuracy_, dtype=float).mean(axis=0),
        breakers={
            m: CircuitBreaker(config.circuit_breaker.failures, config.circuit_breaker.cooldown_s)
            for m in config.models
        },
        prices=model_prices(router, config),
        sessions=SessionStore(config.sessions.max_sessions, config.sessions.ttl_s),
    )
    app = FastAPI(
        title="benchroute",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,  # a redirect would answer before auth; /v1/models/ is simply 404
    )
    app.state.benchroute = state
    app.add_middleware(GuardMiddleware, state=state)
    cors = config.cors
    if cors.allow_origins:  # outermost: a preflight is answered before auth and the limits
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors.allow_origins,
            allow_methods=cors.allow_methods,
            allow_headers=cors.allow_headers,
            allow_credentials=cors.allow_credentials and "*" not in cors.allow_origins,
            expose_headers=[*EXPOSED_HEADERS],
            max_age=cors.max_age,
        )
    install_error_handlers(app)
    app.include_router(ops.router)
    app.include_router(routing.router)
    app.include_router(openai.router)
    return app


__all__ = ["Metrics", "ServeConfig", "create_app", "load_config", "serve", "tune_for_serving"]
