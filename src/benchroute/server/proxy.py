"""Forwarding a chat completion to its upstream: one call, the fallback after a failure, the circuit
breaker, and the SSE relay (event by event, ``model`` renamed to the benchroute model that answered).

Every answer carries the ``x-benchroute-*`` headers (502s too). A 429 from a model called by name is
passed through with its ``Retry-After``; a routed request whose model answers 429 goes to the fallback.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi.responses import JSONResponse, Response, StreamingResponse

from benchroute.server.access import REQUEST_ID_HEADER, RequestRecord
from benchroute.server.errors import error_body, error_response
from benchroute.server.state import AppState

log = logging.getLogger("benchroute.server")


@dataclass
class Choice:
    model: str  # the benchroute model name (a key of serve.yaml models:)
    routed: bool  # chosen by the router (so a failure may fall back)
    reason: str
    probability: float | None = None
    routing_fallback: str | None = None  # why routing gave way to the best-on-average model


class UpstreamFailure(Exception):
    """An upstream call that failed in a way another model may fix (``kind`` is the error code)."""

    def __init__(
        self, model: str, kind: str, detail: str, status: int | None = None, response: Response | None = None
    ) -> None:
        super().__init__(f"{model}: {detail}")
        self.model = model
        self.kind = kind
        self.detail = detail
        self.status = status
        self.response = response  # a 429 answer, to pass through when no other model may answer


def json_bytes(body: Any) -> bytes:
    """Compact UTF-8 JSON; lone surrogates the client sent as \\ud800 escapes are passed on the same way."""
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":")).encode("ascii")


async def proxy(
    state: AppState, choice: Choice, payload: dict[str, Any], stream: bool, record: RequestRecord
) -> Response:
    fallback = state.resolved.fallback
    try:
        return await forward(state, choice.model, payload, stream, choice, record)
    except UpstreamFailure as first:
        log.warning("upstream %s failed (%s: %s)", first.model, first.kind, first.detail)
        if choice.routed and fallback is not None and fallback != choice.model:
            state.metrics.inc("benchroute_upstream_fallbacks_total", **{"from": choice.model, "to": fallback})
            try:
                return await forward(state, fallback, payload, stream, choice, record, fell_back_from=first)
            except UpstreamFailure as second:
                log.warning(
                    "fallback upstream %s failed too (%s: %s)", second.model, second.kind, second.detail
                )
                if second.response is not None:
                    return second.response
                return error_response(
                    502,
                    f"upstream for {first.model!r} failed ({first.detail}); fallback {second.model!r} "
                    f"failed too ({second.detail})",
                    "upstream_error",
                    code=second.kind,
                    headers=_response_headers(second.model, choice, first),
                )
        if first.response is not None:  # 429 and no other model may answer: the client should back off
            return first.response
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
            headers=_response_headers(first.model, choice, None),
        )


def _classify(model: str, exc: Exception) -> UpstreamFailure:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamFailure(model, "upstream_timeout", f"timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamFailure(model, "upstream_unreachable", "connection failed")
    return UpstreamFailure(model, "upstream_error", f"{type(exc).__name__}")


def _response_headers(model: str, choice: Choice, fell_back_from: UpstreamFailure | None) -> dict[str, str]:
    headers = {"x-benchroute-model": model, "x-benchroute-routed-model": choice.model}
    if choice.routing_fallback is not None:
        headers["x-benchroute-routing-fallback"] = choice.routing_fallback
    if fell_back_from is not None:
        headers["x-benchroute-fallback-reason"] = f"{fell_back_from.model}: {fell_back_from.kind}"
    return headers


def _failed(state: AppState, model: str, outcome: str, trips_breaker: bool = True) -> None:
    state.metrics.inc("benchroute_upstream_requests_total", model=model, outcome=outcome)
    if trips_breaker and state.breakers[model].record_failure():
        state.metrics.set("benchroute_upstream_circuit_open", 1, model=model)
        log.warning(
            "circuit of upstream %s opened after %d failures", model, state.breakers[model].consecutive
        )


def _succeeded(state: AppState, model: str) -> None:
    state.metrics.inc("benchroute_upstream_requests_total", model=model, outcome="ok")
    breaker = state.breakers[model]
    if breaker.opened_at is not None:
        state.metrics.set("benchroute_upstream_circuit_open", 0, model=model)
        log.info("circuit of upstream %s closed", model)
    breaker.record_success()


def count_usage(state: AppState, record: RequestRecord, model: str, usage: Any) -> None:
    """Tokens (and their cost) from an OpenAI ``usage`` object, into the record and the metrics."""
    if not isinstance(usage, dict):
        return
    p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not (isinstance(p, int) and isinstance(c, int)) or p < 0 or c < 0:
        return
    record.prompt_tokens, record.completion_tokens = p, c
    state.metrics.inc("benchroute_tokens_total", p, model=model, kind="prompt")
    state.metrics.inc("benchroute_tokens_total", c, model=model, kind="completion")
    cost = state.cost_usd(model, p, c)
    if cost is not None:
        record.cost_usd = cost
        state.metrics.inc("benchroute_cost_usd_total", cost, model=model)


async def forward(
    state: AppState,
    model: str,
    payload: dict[str, Any],
    stream: bool,
    choice: Choice,
    record: RequestRecord,
    fell_back_from: UpstreamFailure | None = None,
) -> Response:
    up = state.config.models[model]
    assert state.client is not None
    out_headers = _response_headers(model, choice, fell_back_from)
    if not state.breakers[model].allow():
        state.metrics.inc("benchroute_upstream_requests_total", model=model, outcome="circuit_open")
        raise UpstreamFailure(model, "circuit_open", "circuit open after repeated failures")
    body = dict(payload)
    body["model"] = up.model or model
    headers = {
        "content-type": "application/json",
        "accept": "text/event-stream" if stream else "application/json",
        REQUEST_ID_HEADER: record.request_id,
    }
    if up.api_key:
        headers["authorization"] = f"Bearer {up.api_key}"
    timeout = httpx.Timeout(
        up.timeout_s or state.config.limits.upstream_timeout_s,
        connect=min(10.0, up.timeout_s or state.config.limits.upstream_timeout_s),
    )
    req = state.client.build_request(
        "POST", f"{up.base_url}/chat/completions", content=json_bytes(body), headers=headers, timeout=timeout
    )
    start = time.perf_counter()
    resp: httpx.Response | None
    try:
        resp = await state.client.send(req, stream=True)
    except httpx.HTTPError as exc:
        _failed(state, model, "error")
        raise _classify(model, exc) from None
    status = resp.status_code
    try:
        if status == 429:  # alive but rate limited: no breaker trip
            raw = await resp.aread()
            _failed(state, model, "http_429", trips_breaker=False)
            retry = {k: v for k, v in resp.headers.items() if k.lower() in ("retry-after", "retry-after-ms")}
            try:
                data = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                data = error_body(f"upstream {model!r} is rate limited", "rate_limit_error")
            passthrough = JSONResponse(data, status_code=429, headers={**out_headers, **retry})
            raise UpstreamFailure(model, "upstream_rate_limited", "HTTP 429", 429, passthrough)
        if status >= 500:
            await resp.aread()
            _failed(state, model, f"http_{status}")
            raise UpstreamFailure(model, "upstream_error", f"HTTP {status}", status)
        ctype = resp.headers.get("content-type", "")
        if stream and status < 300 and ctype.startswith("text/event-stream"):
            _succeeded(state, model)
            relay = relay_sse(state, resp, model, record, start)
            resp = None  # the relay owns (and closes) it now
            return StreamingResponse(
                relay,
                status_code=200,
                media_type="text/event-stream",
                headers={**out_headers, "cache-control": "no-cache"},
            )
        raw = await resp.aread()
    except httpx.HTTPError as exc:
        _failed(state, model, "error")
        raise _classify(model, exc) from None
    finally:
        if resp is not None:
            await resp.aclose()
    record.upstream_ms = (time.perf_counter() - start) * 1000
    state.metrics.observe("benchroute_upstream_duration_seconds", record.upstream_ms / 1000, model=model)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        _failed(state, model, "bad_response")
        raise UpstreamFailure(model, "upstream_error", f"HTTP {status} with a non-JSON body") from None
    if status >= 300:
        # the upstream rejected the request itself (4xx): the client's problem, passed through as is
        state.metrics.inc("benchroute_upstream_requests_total", model=model, outcome=f"http_{status}")
        return JSONResponse(data, status_code=status, headers=out_headers)
    if stream:
        # asked to stream but the upstream answered in one piece: pass the JSON through
        log.info("upstream %s ignored stream=true", model)
    _succeeded(state, model)
    if isinstance(data, dict):
        count_usage(state, record, model, data.get("usage"))
        if "model" in data:
            data["model"] = model
    return JSONResponse(data, status_code=200, headers=out_headers)


async def relay_sse(
    state: AppState, resp: httpx.Response, model: str, record: RequestRecord, start: float
) -> AsyncIterator[bytes]:
    """Relay an upstream SSE stream event by event, renaming ``model`` in each JSON chunk."""
    buf = b""
    usage: list[Any] = []
    try:
        async for chunk in resp.aiter_bytes():
            buf += chunk
            while True:
                cut, sep = _event_end(buf)
                if cut < 0:
                    break
                event, buf = buf[:cut], buf[cut + sep :]
                yield _rewrite_event(event, model, usage) + b"\n\n"
        if buf.strip():
            yield _rewrite_event(buf, model, usage) + b"\n\n"
    except httpx.HTTPError as exc:
        _failed(state, model, "stream_interrupted")
        log.warning("upstream %s stream interrupted (%s)", model, type(exc).__name__)
        err = error_body(
            f"upstream stream from {model!r} interrupted ({type(exc).__name__})", "upstream_error"
        )
        yield b"data: " + json.dumps(err).encode() + b"\n\n"
    finally:
        await resp.aclose()
        record.upstream_ms = (time.perf_counter() - start) * 1000
        state.metrics.observe("benchroute_upstream_duration_seconds", record.upstream_ms / 1000, model=model)
        if usage:
            count_usage(state, record, model, usage[-1])


def _event_end(buf: bytes) -> tuple[int, int]:
    """Index of the first SSE event boundary (blank line) and its length, or (-1, 0)."""
    best, size = -1, 0
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        i = buf.find(sep)
        if i >= 0 and (best < 0 or i < best):
            best, size = i, len(sep)
    return best, size


def _rewrite_event(event: bytes, model: str, usage: list[Any]) -> bytes:
    """One SSE event with ``model`` renamed in its JSON data; a ``usage`` object is appended to ``usage``."""
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
                if isinstance(obj, dict):
                    if obj.get("usage"):
                        usage.append(obj["usage"])
                    if "model" in obj:
                        obj["model"] = model
                        line = b"data: " + json.dumps(obj, separators=(",", ":")).encode()
        out.append(line)
    return b"\n".join(out)


__all__ = ["Choice", "UpstreamFailure", "count_usage", "forward", "json_bytes", "proxy", "relay_sse"]
