"""Shared concerns of the endpoints, as FastAPI dependencies: the app state, API-key auth, request
bodies (one strict JSON parser, one 422 shape) and the input limits."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel

from benchroute.server.config import AuthConfig, ServeConfig
from benchroute.server.errors import ApiError
from benchroute.server.schemas import ChatRequest, RecommendRequest, RouteRequest, parse_body
from benchroute.server.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.benchroute
    return state


State = Annotated[AppState, Depends(get_state)]


def key_matches(auth: AuthConfig, header: bytes) -> bool:
    """Whether an ``Authorization`` header carries one of the configured keys (constant time)."""
    scheme, _, token = header.partition(b" ")
    ok = False
    if scheme.lower() == b"bearer" and token.strip():
        token = token.strip()
        for key in auth.key_bytes:  # check every key: the time taken says nothing about which
            ok |= hmac.compare_digest(token, key)
    return ok


def _authorization(request: Request) -> bytes:
    for k, v in request.scope.get("headers", ()):
        if k == b"authorization":  # the first one counts
            return bytes(v)
    return b""


def require_api_key(request: Request, state: State) -> None:
    """401 unless auth is off or the request carries a configured key."""
    auth = state.config.auth
    if not auth.enabled:
        return
    header = _authorization(request)
    if key_matches(auth, header):
        return
    raise ApiError(
        401,
        "missing API key: send 'Authorization: Bearer <key>'" if not header else "invalid API key",
        "authentication_error",
        code="invalid_api_key",
        headers={"WWW-Authenticate": 'Bearer realm="benchroute"'},
    )


def require_metrics_access(request: Request, state: State) -> None:
    if not state.config.auth.open_metrics:
        require_api_key(request, state)


B = TypeVar("B", bound=BaseModel)


class JsonBody(Generic[B]):
    """Dependency: the request body validated as ``model`` (422 naming the field otherwise)."""

    def __init__(self, model: type[B]) -> None:
        self.model = model

    async def __call__(self, request: Request) -> B:
        payload, body = parse_body(await request.body(), self.model)
        request.state.payload = payload
        return body


RouteBody = Annotated[RouteRequest, Depends(JsonBody(RouteRequest))]
RecommendBody = Annotated[RecommendRequest, Depends(JsonBody(RecommendRequest))]
ChatBody = Annotated[ChatRequest, Depends(JsonBody(ChatRequest))]


def is_unicode(text: str) -> bool:
    """False for a string with a lone surrogate (JSON's "\\ud800"): no tokenizer can encode it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_inputs(texts: Sequence[str], config: ServeConfig, what: str = "input") -> None:
    """413 for too many or too long inputs, 422 for an empty or non-Unicode one."""
    lim = config.limits
    if len(texts) > lim.max_inputs:
        raise ApiError(
            413, f"{len(texts)} inputs exceed the limit of {lim.max_inputs} per request", param=what
        )
    for i, t in enumerate(texts):
        if not t.strip():
            raise ApiError(422, f"{what}[{i}] is empty: every input must be a non-empty string", param=what)
        if not is_unicode(t):
            raise ApiError(
                422,
                f"{what}[{i}] is not valid Unicode text: it holds a lone surrogate (e.g. \\ud800)",
                param=what,
            )
        if len(t) > lim.max_input_chars:
            raise ApiError(
                413,
                f"{what}[{i}] has {len(t)} characters, over the limit of {lim.max_input_chars}",
                param=what,
            )


def check_candidates(router: Any, candidates: list[str] | None) -> None:
    if candidates is None:
        return
    if not candidates:
        raise ApiError(422, "candidates is empty: name at least one model", param="candidates")
    for c in candidates:
        if c not in router.models_:
            raise ApiError(
                422,
                f"unknown model {c!r} in candidates; known models: {', '.join(router.models_)}",
                param="candidates",
            )


T = TypeVar("T")


async def within_deadline(state: AppState, coro: Awaitable[T]) -> T:
    """``coro`` bounded by ``limits.request_timeout_s`` (504 after it; the work is cancelled)."""
    limit = state.config.limits.request_timeout_s
    try:
        async with asyncio.timeout(limit):
            return await coro
    except TimeoutError:
        raise ApiError(504, f"request took longer than {limit:g} s (limits.request_timeout_s)") from None


__all__ = [
    "ChatBody",
    "JsonBody",
    "RecommendBody",
    "RouteBody",
    "State",
    "check_candidates",
    "check_inputs",
    "get_state",
    "is_unicode",
    "key_matches",
    "require_api_key",
    "require_metrics_access",
    "within_deadline",
]
