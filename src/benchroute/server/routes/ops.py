"""Operations: ``GET /healthz`` (liveness, no auth), ``GET /readyz`` (readiness) and ``GET /metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse

from benchroute import __version__
from benchroute.server.deps import State, require_metrics_access

router = APIRouter()


@router.get("/healthz")
async def healthz(state: State) -> dict[str, Any]:
    """The process is up and serving HTTP (the embedding model may still be loading: see /readyz)."""
    return {"status": "ok", "version": __version__, "embedding": state.embeddings.status}


@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    """200 when requests can be served: the embedding model is loaded and, if upstreams are
    configured, at least one has a closed (or half-open) circuit; else 503 saying what is missing.
    Each upstream's circuit state is listed."""
    status = state.embeddings.status
    upstreams = {m: b.state for m, b in state.breakers.items()}
    upstream_ok = not upstreams or any(s != "open" for s in upstreams.values())
    ready = status == "ready" and upstream_ok
    body: dict[str, Any] = {"ready": ready, "embedding": status, "upstreams": upstreams}
    if state.embeddings.error is not None:
        body["error"] = str(state.embeddings.error)
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", dependencies=[Depends(require_metrics_access)])
async def metrics(state: State) -> PlainTextResponse:
    return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
