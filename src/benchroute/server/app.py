"""``benchroute serve``: a routing API and an OpenAI-compatible routing proxy (FastAPI + uvicorn).

Endpoints (docs/server.md has the full reference):

* ``POST /v1/route``      per-query routing: chosen model, per-model predicted correctness, reason.
* ``POST /v1/recommend``  task-level recommendation (the same JSON as ``benchroute recommend``).
* ``POST /v1/chat/completions``  OpenAI-compatible proxy: ``benchroute`` routes the last user message,
  ``benchroute/<profile>`` uses a serve.yaml profile, any configured model name passes through. The
  request goes to the chosen model's upstream (SSE streaming relayed event by event) and the
  response names the model that answered (``model`` field and ``x-benchroute-model`` header). An
  upstream failure or timeout is retried once on the fallback model, else answered with 502 JSON.
* ``GET /v1/models``, ``GET /healthz`` (no auth), ``GET /metrics`` (Prometheus text format).

Design choices:

* Query embedding runs on one dedicated worker thread per embedding model, micro-batched: requests
  that arrive while a batch is being embedded are embedded together in the next batch, so 32
  concurrent single-query requests cost a few forward passes, not 32. Vectors are kept in an
  in-memory LRU (user queries are never written to the on-disk embedding cache). Routing itself
  (kNN on the embeddings) runs in the thread pool; nothing CPU-bound runs on the event loop.
* Overload is rejected, not queued: at most ``limits.max_concurrency`` requests are served at once;
  a request beyond that waits up to ``limits.queue_timeout_s`` (default 0) for a slot, then gets 503
  with ``Retry-After: 1``. Queueing would only turn overload into timeouts. A slot is taken only
  once the whole body has arrived (within ``limits.request_timeout_s``, else 408), so slow uploads
  cannot starve everyone else.
* Every error is OpenAI-style JSON ``{"error": {"message", "type", ...}}``; API keys (ours and the
  upstreams') are never logged nor echoed, and compared in constant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from benchroute import __version__
from benchroute.errors import BenchrouteError, ConfigError, DataError, ModelNotAvailableError
from benchroute.files import jsonable
from benchroute.server.config import (
    ResolvedConfig,
    ResolvedProfile,
    ServeConfig,
    check_exposure,
    load_config,
    resolve_config,
)

log = logging.getLogger("benchroute.server.app")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

KNOWN_PATHS = (
    "/v1/route",
    "/v1/recommend",
    "/v1/chat/completions",
    "/v1/models",
    "/healthz",
    "/metrics",
)
OPEN_PATHS = ("/healthz",)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout",
}


# ------------------------------------------------------------------------------------------ errors


class ApiError(StarletteHTTPException):
    """An HTTP error with an OpenAI-style ``type`` (and optional ``param``/``code``)."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.type = type_ or ERROR_TYPES.get(status, "error")
        self.param = param
        self.code = code


class BodyTooLarge(ApiError):
    """Raised from inside ``receive`` when a body without Content-Length exceeds the limit.

    A Starlette HTTPException subclass, so FastAPI's body parsing re-raises it instead of turning
    it into a 400, and the exception handler answers 413.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes", param="body")


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"message": message, "type": type_}
    if param is not None:
        err["param"] = param
    if code is not None:
        err["code"] = code
    return {"error": err}


def error_response(
    status: int,
    message: str,
    type_: str | None = None,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(message, type_ or ERROR_TYPES.get(status, "error"), param, code),
        status_code=status,
        headers=headers,
    )


def _validation_message(errors: Sequence[dict[str, Any]], skip_body: bool = True) -> tuple[str, str | None]:
    parts, first = [], None
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ())]
        if skip_body and loc and loc[0] == "body":
            loc = loc[1:]
        where = ".".join(loc) or "body"
        first = first or (loc[0] if loc else "body")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{where}: {msg}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more, first


# ----------------------------------------------------------------------------------------- metrics


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: tuple[tuple[str, str], ...], extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class Metrics:
    """A tiny Prometheus registry (counters, gauges, histograms) rendered in text format 0.0.4."""

    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._meta: dict[str, tuple[str, str]] = {}
        self._values: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._hists: dict[str, dict[tuple[tuple[str, str], ...], list[float]]] = {}

    def _declare(self, name: str, kind: str, help_: str) -> None:
        if name not in self._meta:
            self._meta[name] = (kind, help_)
            (self._hists if kind == "histogram" else self._values)[name] = {}

    def counter(self, name: str, help_: str) -> None:
        self._declare(name, "counter", help_)

    def gauge(self, name: str, help_: str) -> None:
        self._declare(name, "gauge", help_)

    def histogram(self, name: str, help_: str) -> None:
        self._declare(name, "histogram", help_)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[name][tuple(sorted(labels.items()))] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._hists[name]
            h = series.get(key)
            if h is None:
                h = series[key] = [0.0] * (len(self.BUCKETS) + 2)  # buckets..., sum, count
            for i, b in enumerate(self.BUCKETS):
                if value <= b:
                    h[i] += 1
            h[-2] += value
            h[-1] += 1

    def value(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            for name, (kind, help_) in self._meta.items():
                out.append(f"# HELP {name} {help_}")
                out.append(f"# TYPE {name} {kind}")
                if kind == "histogram":
                    for key, h in sorted(self._hists[name].items()):
                        for i, b in enumerate(self.BUCKETS):
                            out.append(f"{name}_bucket{_labels(key, (('le', _num(b)),))} {_num(h[i])}")
                        out.append(f"{name}_bucket{_labels(key, (('le', '+Inf'),))} {_num(h[-1])}")
                        out.append(f"{name}_sum{_labels(key)} {_num(h[-2])}")
                        out.append(f"{name}_count{_labels(key)} {_num(h[-1])}")
                else:
                    for key, v in sorted(self._values[name].items()):
                        out.append(f"{name}{_labels(key)} {_num(v)}")
        return "\n".join(out) + "\n"


def _new_metrics() -> Metrics:
    m = Metrics()
    m.counter("benchroute_http_requests_total", "HTTP requests by path, method and status code.")
    m.histogram("benchroute_http_request_duration_seconds", "Time to the end of the response, by path.")
    m.gauge("benchroute_http_requests_in_flight", "Requests being served now (limited by max_concurrency).")
    m.counter("benchroute_routed_total", "Models chosen, by endpoint (route, chat, recommend) and model.")
    m.counter("benchroute_upstream_requests_total", "Upstream chat calls by model and outcome.")
    m.counter("benchroute_upstream_fallbacks_total", "Upstream failures retried on the fallback model.")
    m.counter("benchroute_embedding_batches_total", "Forward passes of the embedding model.")
    m.counter("benchroute_embedded_texts_total", "Texts embedded (LRU misses).")
    m.counter("benchroute_embedding_cache_hits_total", "Texts served from the in-memory embedding LRU.")
    return m


# ------------------------------------------------------------------------------------- embeddings

_MODEL_LOCK = threading.Lock()
_MODEL_WORKERS: dict[str, tuple[ThreadPoolExecutor, Any]] = {}


def _model_worker(model_name: str) -> tuple[ThreadPoolExecutor, Any]:
    """One loaded embedding model and its single worker thread per process (shared by all apps)."""
    with _MODEL_LOCK:
        got = _MODEL_WORKERS.get(model_name)
        if got is None:
            from benchroute.embed import Embedder

            embedder = Embedder(model_name, cache=False)
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="benchroute-embed")
            got = _MODEL_WORKERS[model_name] = (executor, embedder)
        return got


class EmbeddingService:
    """Micro-batched, LRU-cached query embedding off the event loop.

    ``embed(texts)`` enqueues the texts that are neither cached nor already queued and awaits their
    vectors; one background task drains the queue into batches of up to ``batch_size`` texts, each
    embedded on the model's worker thread.
    """

    def __init__(self, model_name: str, batch_size: int, cache_size: int, metrics: Metrics) -> None:
        self.model_name = model_name
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.metrics = metrics
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[np.ndarray]] = {}
        self._queue: list[str] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._embedder: Any = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._executor, self._embedder = await run_in_threadpool(_model_worker, self.model_name)
        # load the weights and run one pass now, so the first request does not pay for it
        await loop.run_in_executor(self._executor, self._embedder.encode_uncached, ["warm up"])
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._worker(), name="benchroute-embed-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for fut in self._inflight.values():
            if not fut.done():
                fut.set_exception(RuntimeError("server shutting down"))
        self._inflight.clear()

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._wakeup is None:
            raise RuntimeError("embedding service not started")
        loop = asyncio.get_running_loop()
        slots: list[np.ndarray | asyncio.Future[np.ndarray]] = []
        hits = 0
        for t in texts:
            vec = self._lru.get(t)
            if vec is not None:
                self._lru.move_to_end(t)
                slots.append(vec)
                hits += 1
                continue
            fut = self._inflight.get(t)
            if fut is None:
                fut = self._inflight[t] = loop.create_future()
                self._queue.append(t)
            slots.append(fut)
        if hits:
            self.metrics.inc("benchroute_embedding_cache_hits_total", hits)
        if len(self._queue):
            self._wakeup.set()
        # shield: a cancelled request must not cancel a vector other requests are waiting for
        vecs = [s if isinstance(s, np.ndarray) else await asyncio.shield(s) for s in slots]
        return np.stack(vecs) if vecs else np.zeros((0, 0), np.float32)

    async def _worker(self) -> None:
        assert self._wakeup is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = self._queue[: self.batch_size]
                del self._queue[: self.batch_size]
                try:
                    vecs = await loop.run_in_executor(self._executor, self._embedder.encode_uncached, batch)
                except Exception as exc:  # handed to every waiting request
                    log.exception("embedding a batch of %d texts failed", len(batch))
                    for t in batch:
                        fut = self._inflight.pop(t, None)
                        if fut is not None and not fut.done():
                            fut.set_exception(exc)
                    continue
                self.metrics.inc("benchroute_embedding_batches_total")
                self.metrics.inc("benchroute_embedded_texts_total", len(batch))
                for t, v in zip(batch, vecs, strict=True):
                    if self.cache_size:
                        self._lru[t] = v
                        if len(self._lru) > self.cache_size:
                            self._lru.popitem(last=False)
                    fut = self._inflight.pop(t, None)
                    if fut is not None and not fut.done():
                        fut.set_result(v)


# ------------------------------------------------------------------------------------- app state


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


# ----------------------------------------------------------------------------------- middleware


class GuardMiddleware:
    """Auth, body-size limit, concurrency limit and request metrics, as one pure ASGI layer.

    Pure ASGI (not BaseHTTPMiddleware) so streamed responses are timed to their last byte and the
    concurrency slot is held until the stream ends.
    """

    def __init__(self, app: Any, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        st = self.state
        cfg = st.config
        path = scope["path"]
        label = path if path in KNOWN_PATHS else "other"
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        acquired = False
        try:
            rejection = self._check_auth(scope, path) or self._check_length(scope)
            if rejection is not None:
                await rejection(scope, receive, send_wrapper)
                return
            if path.startswith("/v1/"):
                # the whole body first, bounded in size and time: a slow upload must not hold a slot
                body = await self._read_body(receive)
                if body is None:  # the client went away
                    status[0] = 499
                    return
                if not isinstance(body, bytes):
                    await body(scope, receive, send_wrapper)
                    return
                receive = _replay(body, receive)
                acquired = await self._acquire()
                if not acquired:
                    await error_response(
                        503,
                        f"server busy: {cfg.limits.max_concurrency} requests in flight, try again",
                        "overloaded",
                        headers={"Retry-After": "1"},
                    )(scope, receive, send_wrapper)
                    return
                st.metrics.inc("benchroute_http_requests_in_flight")
            await self.app(scope, self._limited(receive), send_wrapper)
        finally:
            if acquired:
                assert st.semaphore is not None
                st.semaphore.release()
                st.metrics.inc("benchroute_http_requests_in_flight", -1)
            st.metrics.inc(
                "benchroute_http_requests_total", path=label, method=scope["method"], status=str(status[0])
            )
            st.metrics.observe(
                "benchroute_http_request_duration_seconds", time.perf_counter() - start, path=label
            )

    def _check_auth(self, scope: Scope, path: str) -> JSONResponse | None:
        auth = self.state.config.auth
        if not auth.enabled or path in OPEN_PATHS or (path == "/metrics" and auth.open_metrics):
            return None
        header = b""
        for k, v in scope.get("headers", ()):
            if k == b"authorization":
                header = v
                break
        scheme, _, token = header.partition(b" ")
        ok = False
        if scheme.lower() == b"bearer" and token.strip():
            token = token.strip()
            for key in auth.key_bytes:  # check every key: the time taken says nothing about which
                ok |= hmac.compare_digest(token, key)
        if ok:
            return None
        msg = "missing API key: send 'Authorization: Bearer <key>'" if not header else "invalid API key"
        return error_response(
            401,
            msg,
            "authentication_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": 'Bearer realm="benchroute"'},
        )

    def _check_length(self, scope: Scope) -> JSONResponse | None:
        limit = self.state.config.limits.max_body_bytes
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    return error_response(400, "bad Content-Length header")
                if n > limit:
                    return error_response(
                        413, f"request body of {n} bytes exceeds the limit of {limit} bytes", param="body"
                    )
        return None

    async def _read_body(self, receive: Receive) -> bytes | JSONResponse | None:
        """The request body, read before a concurrency slot is taken (None: the client left).

        A body over ``limits.max_body_bytes`` is answered 413 as soon as it is too big, and one that
        has not fully arrived after ``limits.request_timeout_s`` 408, so a client that sends its
        headers and then dribbles (or withholds) the body cannot tie up the server.
        """
        lim = self.state.config.limits
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(lim.request_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > lim.max_body_bytes:
                        return error_response(
                            413, f"request body exceeds {lim.max_body_bytes} bytes", param="body"
                        )
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            return error_response(
                408,
                f"request body not received within {lim.request_timeout_s:g} s (limits.request_timeout_s)",
                param="body",
            )

    def _limited(self, receive: Receive) -> Receive:
        limit = self.state.config.limits.max_body_bytes
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return limited_receive

    async def _acquire(self) -> bool:
        sem = self.state.semaphore
        assert sem is not None
        wait = self.state.config.limits.queue_timeout_s
        if not sem.locked():
            await sem.acquire()
            return True
        if wait <= 0:
            return False
        try:
            async with asyncio.timeout(wait):
                await sem.acquire()
            return True
        except TimeoutError:
            return False


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` that hands out an already read body once, then waits for the disconnect as usual."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# ----------------------------------------------------------------------------------- request models


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | list[str] = Field(description="one query or a list of queries")
    candidates: list[str] | None = Field(default=None, description="restrict the choice to these models")

    @field_validator("input", mode="before")
    @classmethod
    def _str_or_list(cls, v: Any) -> Any:
        if isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            return v
        raise ValueError("must be a string or a list of strings")


class LabeledSample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str
    correct: dict[str, int] = Field(description="0/1 correctness of every router model on this input")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[str] = Field(min_length=1)
    labeled: list[LabeledSample] | None = None
    candidates: list[str] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """Only what the proxy needs; every other field is forwarded to the upstream untouched."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False


# ----------------------------------------------------------------------------------------- helpers


def _check_inputs(texts: Sequence[str], config: ServeConfig, what: str = "input") -> None:
    lim = config.limits
    if len(texts) > lim.max_inputs:
        raise ApiError(
            413, f"{len(texts)} inputs exceed the limit of {lim.max_inputs} per request", param=what
        )
    for i, t in enumerate(texts):
        if not t.strip():
            raise ApiError(422, f"{what}[{i}] is empty: every input must be a non-empty string", param=what)
        if not _is_unicode(t):
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


def _is_unicode(text: str) -> bool:
    """False for a string with a lone surrogate (JSON's "\\ud800"): no tokenizer can encode it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_candidates(router: Any, candidates: list[str] | None) -> None:
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


async def _deadline(state: AppState, coro: Awaitable[Any]) -> Any:
    limit = state.config.limits.request_timeout_s
    try:
        async with asyncio.timeout(limit):
            return await coro
    except TimeoutError:
        raise ApiError(504, f"request took longer than {limit:g} s (limits.request_timeout_s)") from None


def _last_user_text(messages: list[ChatMessage]) -> str:
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


@dataclass
class Choice:
    model: str  # the benchroute model name (a key of serve.yaml models:)
    routed: bool  # chosen by the router (so a failure may fall back)
    reason: str
    probability: float | None = None


class UpstreamFailure(Exception):
    def __init__(self, model: str, kind: str, detail: str) -> None:
        super().__init__(f"{model}: {detail}")
        self.model = model
        self.kind = kind
        self.detail = detail


# ------------------------------------------------------------------------------------------- app


def create_app(router: Any, config: ServeConfig) -> FastAPI:
    """The FastAPI app serving ``router`` as configured (raises ConfigError for a bad config).

    The router must be fitted (``Router.load(dir)``); ``config`` comes from :func:`load_config`.
    """
    resolved = resolve_config(config, router)
    metrics = _new_metrics()
    embeddings = EmbeddingService(
        router.embedding_model, config.embedding.batch_size, config.embedding.cache_size, metrics
    )
    state = AppState(
        router=router,
        config=config,
        resolved=resolved,
        metrics=metrics,
        embeddings=embeddings,
        bma_scores=np.asarray(router.task_accuracy_, dtype=float).mean(axis=0),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        lim = config.limits
        state.semaphore = asyncio.Semaphore(lim.max_concurrency)
        state.client = httpx.AsyncClient(
            timeout=httpx.Timeout(lim.upstream_timeout_s, connect=min(10.0, lim.upstream_timeout_s)),
            limits=httpx.Limits(
                max_connections=max(16, 2 * lim.max_concurrency), max_keepalive_connections=32
            ),
            follow_redirects=False,
        )
        await embeddings.start()
        log.info(
            "benchroute serving %d router models (%d with an upstream), profiles: %s; fallback: %s; auth: %s",
            len(router.models_),
            len(resolved.profiles["benchroute"].candidates),
            ", ".join(resolved.profiles) or "-",
            resolved.fallback or "none",
            f"{len(config.auth.key_bytes)} key(s)" if config.auth.enabled else "OFF",
        )
        try:
            yield
        finally:
            await embeddings.stop()
            await state.client.aclose()

    app = FastAPI(
        title="benchroute",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.benchroute = state
    app.add_middleware(GuardMiddleware, state=state)
    _install_error_handlers(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/metrics")
    async def metrics_endpoint() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        data = [
            {
                "id": pid,
                "object": "model",
                "created": state.started,
                "owned_by": "benchroute",
                "description": prof.description,
            }
            for pid, prof in resolved.profiles.items()
        ]
        names = list(router.models_) + [m for m in config.models if m not in router.models_]
        for m in names:
            data.append(
                {
                    "id": m,
                    "object": "model",
                    "created": state.started,
                    "owned_by": "benchroute",
                    "routable": m in router.models_,
                    "upstream": m in config.models,
                }
            )
        return {"object": "list", "data": data}

    @app.post("/v1/route")
    async def route(body: RouteRequest) -> dict[str, Any]:
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts:
            raise ApiError(422, "input is empty: give one query or a list of queries", param="input")
        _check_inputs(texts, config)
        _check_candidates(router, body.candidates)

        async def work() -> list[Any]:
            X = await embeddings.embed(texts)
            return await run_in_threadpool(router.route, X, body.candidates)

        decisions = await _deadline(state, work())
        for d in decisions:
            metrics.inc("benchroute_routed_total", endpoint="route", model=d.model)
        return {
            "object": "list",
            "data": [jsonable(asdict(d)) for d in decisions],  # the same objects as `benchroute route --json`
            "best_on_average": router.models_[int(router.best_on_average_)],
        }

    @app.post("/v1/recommend")
    async def recommend(body: RecommendRequest) -> dict[str, Any]:
        _check_inputs(body.inputs, config, "inputs")
        _check_candidates(router, body.candidates)
        labeled = body.labeled or []
        if len(labeled) > config.limits.max_labeled:
            raise ApiError(
                413,
                f"{len(labeled)} labeled samples exceed the limit of {config.limits.max_labeled}",
                param="labeled",
            )
        lab_texts = [s.input for s in labeled]
        _check_inputs(lab_texts, config, "labeled.input")
        Y = _labeled_matrix(router, labeled)

        async def work() -> Any:
            X = await embeddings.embed(list(body.inputs) + lab_texts)
            n = len(body.inputs)
            lab = (X[n:], Y) if labeled else None
            return await run_in_threadpool(router.recommend, X[:n], lab, body.candidates)

        rec = await _deadline(state, work())
        metrics.inc("benchroute_routed_total", endpoint="recommend", model=rec.chosen)
        return rec.to_dict()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        payload = _parse_json(await request.body())
        if not isinstance(payload, dict):
            raise ApiError(422, "request body must be a JSON object", param="body")
        try:
            req = ChatRequest.model_validate(payload)
        except ValidationError as exc:
            msg, param = _validation_message(exc.errors(include_url=False), skip_body=False)
            raise ApiError(422, msg, param=param) from None

        async def work() -> Response:
            # one deadline for routing + the upstream call(s); a stream's body is bounded by the
            # upstream read timeout between chunks instead
            choice = await _choose(state, req)
            metrics.inc("benchroute_routed_total", endpoint="chat", model=choice.model)
            return await _proxy(state, choice, payload, stream=req.stream)

        return await _deadline(state, work())

    return app


MAX_JSON_DEPTH = 64


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON: use null or a finite number")


def _parse_json(raw: bytes) -> Any:
    """A chat body as JSON, or 422: never an exception the caller has not thought of.

    Strict (no NaN/Infinity, which the upstream call could not encode) and at most
    ``MAX_JSON_DEPTH`` levels deep, so forwarding it can never hit Python's recursion limit.
    """
    try:
        payload = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(422, "request body is not valid JSON: nested too deeply", param="body") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN, an integer of over 4300 digits
        raise ApiError(422, f"request body is not valid JSON ({exc})", param="body") from None
    stack = [(payload, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict | list):
            if level > MAX_JSON_DEPTH:
                raise ApiError(
                    422, f"request body is nested deeper than {MAX_JSON_DEPTH} levels", param="body"
                )
            stack.extend((v, level + 1) for v in (value.values() if isinstance(value, dict) else value))
    return payload


def _json_bytes(body: Any) -> bytes:
    """Compact UTF-8 JSON; lone surrogates the client sent as \\ud800 escapes are passed on the same way."""
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":")).encode("ascii")


def _labeled_matrix(router: Any, labeled: list[LabeledSample]) -> np.ndarray:
    models = list(router.models_)
    Y = np.zeros((len(labeled), len(models)), dtype=np.float32)
    for i, sample in enumerate(labeled):
        unknown = [m for m in sample.correct if m not in models]
        if unknown:
            raise ApiError(
                422,
                f"labeled[{i}].correct: unknown model(s) {unknown}; known: {', '.join(models)}",
                param="labeled",
            )
        missing = [m for m in models if m not in sample.correct]
        if missing:
            raise ApiError(
                422,
                f"labeled[{i}].correct lacks {missing}: give every model's 0/1 correctness",
                param="labeled",
            )
        for m, v in sample.correct.items():
            if v not in (0, 1):
                raise ApiError(422, f"labeled[{i}].correct.{m} must be 0 or 1, got {v}", param="labeled")
            Y[i, models.index(m)] = v
    return Y


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, ApiError):
            return error_response(
                exc.status_code, str(exc.detail), exc.type, exc.param, exc.code, exc.headers
            )
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        return error_response(exc.status_code, message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        msg, param = _validation_message(exc.errors())
        return error_response(422, msg, "invalid_request_error", param)

    @app.exception_handler(BenchrouteError)
    async def benchroute_error(request: Request, exc: BenchrouteError) -> JSONResponse:
        if isinstance(exc, ConfigError | DataError):
            return error_response(422, str(exc), "invalid_request_error")
        if isinstance(exc, ModelNotAvailableError):
            return error_response(503, str(exc), "service_unavailable")
        return error_response(400, str(exc), "invalid_request_error")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error (see the server log)", "server_error")


# ---------------------------------------------------------------------------------------- routing


def _best_on_average(state: AppState, candidates: Sequence[str]) -> str:
    models = state.router.models_
    idx = [models.index(c) for c in candidates]
    return models[idx[int(np.argmax(state.bma_scores[idx]))]]


async def _choose(state: AppState, req: ChatRequest) -> Choice:
    """Which configured model answers this chat request."""
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
    text = _last_user_text(req.messages).strip()
    if not text:
        bma = _best_on_average(state, prof.candidates)
        return Choice(bma, True, "no text in the last user message: best-on-average model")
    text = text[: config.limits.max_input_chars]
    if not _is_unicode(text):  # route on what can be embedded; the upstream still gets the message as sent
        text = text.encode("utf-8", "replace").decode("utf-8")
    X = await state.embeddings.embed([text])
    decision = (await run_in_threadpool(state.router.route, X, list(prof.candidates)))[0]
    return Choice(decision.model, True, decision.reason, decision.probability)


# ------------------------------------------------------------------------------------------ proxy


async def _proxy(state: AppState, choice: Choice, payload: dict[str, Any], stream: bool) -> Response:
    fallback = state.resolved.fallback
    try:
        return await _forward(state, choice.model, payload, stream, choice)
    except UpstreamFailure as first:
        log.warning("upstream %s failed (%s: %s)", first.model, first.kind, first.detail)
        if choice.routed and fallback is not None and fallback != choice.model:
            state.metrics.inc("benchroute_upstream_fallbacks_total", **{"from": choice.model, "to": fallback})
            try:
                return await _forward(state, fallback, payload, stream, choice, fell_back_from=first)
            except UpstreamFailure as second:
                log.warning(
                    "fallback upstream %s failed too (%s: %s)", second.model, second.kind, second.detail
                )
                return error_response(
                    502,
                    f"upstream for {first.model!r} failed ({first.detail}); fallback {second.model!r} "
                    f"failed too ({second.detail})",
                    "upstream_error",
                    code=second.kind,
                )
        why = (
            "no fallback model configured"
            if fallback is None
            else (
                "the fallback is the model that failed"
                if fallback == choice.model
                else "no fallback for a model requested by name"
            )
        )
        return error_response(
            502,
            f"upstream for {first.model!r} failed ({first.detail}); {why}",
            "upstream_error",
            code=first.kind,
        )


def _classify(model: str, exc: Exception) -> UpstreamFailure:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamFailure(model, "upstream_timeout", f"timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamFailure(model, "upstream_unreachable", "connection failed")
    return UpstreamFailure(model, "upstream_error", f"{type(exc).__name__}")


def _response_headers(model: str, choice: Choice, fell_back_from: UpstreamFailure | None) -> dict[str, str]:
    headers = {"x-benchroute-model": model, "x-benchroute-routed-model": choice.model}
    if fell_back_from is not None:
        headers["x-benchroute-fallback-reason"] = f"{fell_back_from.model}: {fell_back_from.kind}"
    return headers


async def _forward(
    state: AppState,
    model: str,
    payload: dict[str, Any],
    stream: bool,
    choice: Choice,
    fell_back_from: UpstreamFailure | None = None,
) -> Response:
    up = state.config.models[model]
    assert state.client is not None
    body = dict(payload)
    body["model"] = up.model or model
    headers = {
        "content-type": "application/json",
        "accept": "text/event-stream" if stream else "application/json",
    }
    if up.api_key:
        headers["authorization"] = f"Bearer {up.api_key}"
    timeout = httpx.Timeout(
        up.timeout_s or state.config.limits.upstream_timeout_s,
        connect=min(10.0, up.timeout_s or state.config.limits.upstream_timeout_s),
    )
    req = state.client.build_request(
        "POST", f"{up.base_url}/chat/completions", content=_json_bytes(body), headers=headers, timeout=timeout
    )
    try:
        resp = await state.client.send(req, stream=True)
    except httpx.HTTPError as exc:
        state.metrics.inc("benchroute_upstream_requests_total", model=model, outcome="error")
        raise _classify(model, exc) from None
    out_headers = _response_headers(model, choice, fell_back_from)
    status = resp.status_code
    try:
        if status >= 500 or status == 429:
            await resp.aread()
            state.metrics.inc("benchroute_upstream_requests_total", model=model, outcome=f"http_{status}")
            raise UpstreamFailure(model, "upstream_error", f"HTTP {status}")
        ctype = resp.headers.get("content-type", "")
        if stream and status < 300 and ctype.startswith("text/event-stream"):
            state.metrics.inc("benchroute_upstream_requests_total", model=model, outcome="ok")
            relay = _relay_sse(state, resp, model)
            resp = None  # the relay owns (and closes) it now
            return StreamingResponse(
                relay,
                status_code=200,
                media_type="text/event-stream",
                headers={**out_headers, "cache-control": "no-cache"},
            )
        raw = await resp.aread()
    except httpx.HTTPError as exc:
        state.metrics.inc("benchroute_upstream_requests_total", model=model, outcome="error")
        raise _classify(model, exc) from None
    finally:
        if resp is not None:
            await resp.aclose()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        state.metrics.inc("benchroute_upstream_requests_total", model=model, outcome="bad_response")
        raise UpstreamFailure(model, "upstream_error", f"HTTP {status} with a non-JSON body") from None
    if status >= 300:
        # the upstream rejected the request itself (4xx): the client's problem, passed through as is
        state.metrics.inc("benchroute_upstream_requests_total", model=model, outcome=f"http_{status}")
        return JSONResponse(data, status_code=status, headers=out_headers)
    if stream:
        # asked to stream but the upstream answered in one piece: pass the JSON through
        log.info("upstream %s ignored stream=true", model)
    state.metrics.inc("benchroute_upstream_requests_total", model=model, outcome="ok")
    if isinstance(data, dict) and "model" in data:
        data["model"] = model
    return JSONResponse(data, status_code=200, headers=out_headers)


async def _relay_sse(state: AppState, resp: httpx.Response, model: str) -> AsyncIterator[bytes]:
    """Relay an upstream SSE stream event by event, renaming ``model`` in each JSON chunk."""
    buf = b""
    try:
        async for chunk in resp.aiter_bytes():
            buf += chunk
            while True:
                cut, sep = _event_end(buf)
                if cut < 0:
                    break
                event, buf = buf[:cut], buf[cut + sep :]
                yield _rewrite_event(event, model) + b"\n\n"
        if buf.strip():
            yield _rewrite_event(buf, model) + b"\n\n"
    except httpx.HTTPError as exc:
        state.metrics.inc("benchroute_upstream_requests_total", model=model, outcome="stream_interrupted")
        log.warning("upstream %s stream interrupted (%s)", model, type(exc).__name__)
        err = error_body(
            f"upstream stream from {model!r} interrupted ({type(exc).__name__})", "upstream_error"
        )
        yield b"data: " + json.dumps(err).encode() + b"\n\n"
    finally:
        await resp.aclose()


def _event_end(buf: bytes) -> tuple[int, int]:
    """Index of the first SSE event boundary (blank line) and its length, or (-1, 0)."""
    best, size = -1, 0
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        i = buf.find(sep)
        if i >= 0 and (best < 0 or i < best):
            best, size = i, len(sep)
    return best, size


def _rewrite_event(event: bytes, model: str) -> bytes:
    lines = event.replace(b"\r\n", b"\n").split(b"\n")
    out = []
    for line in lines:
        if line.startswith(b"data:"):
            data = line[5:].strip()
            if data and data != b"[DONE]":
                try:
                    obj = json.loads(data)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    obj = None
                if isinstance(obj, dict) and "model" in obj:
                    obj["model"] = model
                    line = b"data: " + json.dumps(obj, separators=(",", ":")).encode()
        out.append(line)
    return b"\n".join(out)


# ---------------------------------------------------------------------------------------- serving


def tune_for_serving() -> None:
    """One OpenMP thread per FAISS search: requests already run concurrently, and a single-query
    search split over threads only oversubscribes the CPU (measured: p50 58 ms with 2 threads vs
    15 ms with 1 on a busy 2-core machine, 67,873 x 768 store). Process-wide, so only ``serve`` calls it."""
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a dependency
        return
    faiss.omp_set_num_threads(1)


def serve(
    router_dir: Path,
    config_path: Path | None,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> None:
    """Load the router and serve.yaml, validate both, and run uvicorn until interrupted.

    Raises :class:`ConfigError` / :class:`IntegrityError` before listening if anything is wrong.
    """
    from benchroute.router.estimator import Router

    config = load_config(config_path)
    check_exposure(config, host)
    router = Router.load(router_dir)
    app = create_app(router, config)
    _model_worker(router.embedding_model)  # a missing embedding model fails here, as a BenchrouteError
    tune_for_serving()

    import uvicorn

    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )


__all__ = ["Metrics", "ServeConfig", "create_app", "load_config", "serve", "tune_for_serving"]
