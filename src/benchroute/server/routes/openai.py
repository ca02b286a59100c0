"""The OpenAI-compatible proxy: ``POST /v1/chat/completions`` and ``GET /v1/models``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from benchroute.server.access import RequestRecord
from benchroute.server.config import ResolvedProfile
from benchroute.server.deps import ChatBody, State, is_unicode, require_api_key, within_deadline
from benchroute.server.embedding import BudgetExceeded
from benchroute.server.errors import ApiError
from benchroute.server.proxy import Choice, proxy
from benchroute.server.schemas import ChatMessage, ChatRequest
from benchroute.server.sessions import SESSION_HEADER, RoutingSession, session_key
from benchroute.server.state import AppState

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


def _model_cards(state: AppState) -> list[dict[str, Any]]:
    """What can be called: the routing profiles, then every model with an upstream (router models
    first). Router models without an upstream are left out: /v1/route may name them, but a chat
    request for them could only fail."""
    cards: list[dict[str, Any]] = [
        {
            "id": pid,
            "object": "model",
            "created": state.started,
            "owned_by": "benchroute",
            "description": prof.description,
        }
        for pid, prof in state.resolved.profiles.items()
    ]
    router_models = list(state.router.models_)
    configured = [m for m in router_models if m in state.config.models]
    configured += [m for m in state.config.models if m not in router_models]
    for m in configured:
        cards.append(
            {
                "id": m,
                "object": "model",
                "created": state.started,
                "owned_by": "benchroute",
                "routable": m in router_models,
                "upstream": True,
            }
        )
    return cards


@router.get("/models")
async def list_models(state: State) -> dict[str, Any]:
    return {"object": "list", "data": _model_cards(state)}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, state: State) -> dict[str, Any]:
    for card in _model_cards(state):
        if card["id"] == model_id:
            return card
    hint = (
        "it is a router model without an upstream under models: in serve.yaml"
        if model_id in state.router.models_
        else "GET /v1/models lists what can be called"
    )
    raise ApiError(404, f"model {model_id!r} does not exist ({hint})", param="model", code="model_not_found")


def last_user_text(messages: list[ChatMessage]) -> str:
    """The text routed on: the last user message, its text parts joined."""
    for msg in reversed(messages):
        if msg.role != "user":
            continue
        if isinstance(msg.content, str):
            return msg.content
        if isinstance(msg.content, list):
            parts = [p.get("text") for p in msg.content if isinstance(p, dict) and p.get("type") == "text"]
            return "\n".join(p for p in parts if isinstance(p, str))
        return ""
    return ""


def _route_in_session(
    router: Any, X: np.ndarray, candidates: list[str], session: RoutingSession | None
) -> tuple[Any, int | None]:
    """``router.route`` for one query (on a worker thread), continuing ``session`` if given: its lock
    keeps the session's queries in order even when a request gives up waiting (the thread finishes)."""
    if session is None:
        return router.route(X, candidates)[0], None
    with session.lock:
        before = round(session.state.n)
        return router.route(X, candidates, session=session.state)[0], before


async def choose(
    state: AppState,
    req: ChatRequest,
    key: str | None = None,
    record: RequestRecord | None = None,
) -> Choice:
    """Which configured model answers this chat request (continuing session ``key`` when routed)."""
    resolved, config = state.resolved, state.config
    prof: ResolvedProfile | None = resolved.profiles.get(req.model)
    if prof is None:
        if req.model in config.models:
            return Choice(req.model, False, "requested by name")
        available = ", ".join(list(resolved.profiles) + list(config.models))
        raise ApiError(
            404,
            f"model {req.model!r} does not exist; available: {available}",
            param="model",
            code="model_not_found",
        )
    if prof.fixed is not None:
        return Choice(prof.fixed, True, f"profile {prof.name} fixes {prof.fixed}")
    if not prof.candidates:
        raise ApiError(
            503,
            "no router model has an upstream: add them under models: in serve.yaml",
            "service_unavailable",
            param="model",
        )
    text = last_user_text(req.messages).strip()
    if not text:
        bma = state.best_on_average(prof.candidates)
        return Choice(bma, True, "no text in the last user message: best-on-average model")
    text = text[: config.limits.max_input_chars]
    if not is_unicode(text):  # route on what can be embedded; the upstream still gets the message as sent
        text = text.encode("utf-8", "replace").decode("utf-8")
    routing = config.routing
    session = None
    if key is not None:  # created only here: a fixed profile or a model called by name keeps none
        session = state.sessions.get_or_create(key, lambda: RoutingSession(state.router.new_session()))
    try:
        async with asyncio.timeout(routing.timeout_ms / 1000):
            X = await state.embeddings.embed([text], "routing", budget_s=routing.budget_ms / 1000)
            decision, before = await run_in_threadpool(
                _route_in_session, state.router, X, list(prof.candidates), session
            )
    except BudgetExceeded as exc:
        why = exc.reason
    except TimeoutError:
        why = "routing_timeout"
    else:
        if record is not None:
            record.session_queries = before
        return Choice(decision.model, True, decision.reason, decision.probability)
    # never slower than calling the best model: past the budget, the best-on-average candidate answers
    state.metrics.inc("benchroute_routing_fallbacks_total", reason=why)
    bma = state.best_on_average(prof.candidates)
    return Choice(bma, True, f"routing fallback ({why}): best-on-average model", routing_fallback=why)


async def _complete(
    state: AppState, req: ChatRequest, payload: dict[str, Any], record: RequestRecord, key: str | None
) -> Response:
    # one deadline for routing + the upstream call(s); a stream's body is bounded by the upstream
    # read timeout between chunks instead
    record.requested_model = req.model
    start = time.perf_counter()
    choice = await choose(state, req, key, record)
    if choice.routed:
        record.routing_ms = (time.perf_counter() - start) * 1000
        state.metrics.observe(
            "benchroute_routing_duration_seconds",
            record.routing_ms / 1000,
            outcome=choice.routing_fallback or "routed",
        )
    record.routed_model, record.routing_fallback = choice.model, choice.routing_fallback
    state.metrics.inc("benchroute_routed_total", endpoint="chat", model=choice.model)
    response = await proxy(state, choice, payload, bool(req.stream), record)
    record.model = response.headers.get("x-benchroute-model")
    record.upstream_fallback = response.headers.get("x-benchroute-fallback-reason")
    return response


@router.post("/chat/completions")
async def chat_completions(body: ChatBody, request: Request, state: State) -> Response:
    record: RequestRecord = request.state.record
    key = session_key(request.headers.get(SESSION_HEADER), (body.model_extra or {}).get("user"))
    record.session = key is not None
    return await within_deadline(state, _complete(state, body, request.state.payload, record, key))
