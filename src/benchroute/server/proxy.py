"""Forwarding a chat completion to its upstream: one call, the fallback after a failure, and the SSE
relay (event by event, ``model`` renamed to the benchroute model that answered)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi.responses import JSONResponse, Response, StreamingResponse

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
    def __init__(self, model: str, kind: str, detail: str) -> None:
        super().__init__(f"{model}: {detail}")
        self.model = model
        self.kind = kind
        self.detail = detail


def json_bytes(body: Any) -> bytes:
    """Compact UTF-8 JSON; lone surrogates the client sent as \\ud800 escapes are passed on the same way."""
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":")).encode("ascii")


async def proxy(state: AppState, choice: Choice, payload: dict[str, Any], stream: bool) -> Response:
    fallback = state.resolved.fallback
    try:
        return await forward(state, choice.model, payload, stream, choice)
    except UpstreamFailure as first:
        log.warning("upstream %s failed (%s: %s)", first.model, first.kind, first.detail)
        if choice.routed and fallback is not None and fallback != choice.model:
            state.metrics.inc("benchroute_upstream_fallbacks_total", **{"from": choice.model, "to": fallback})
            try:
                return await forward(state, fallback, payload, stream, choice, fell_back_from=first)
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
    if choice.routing_fallback is not None:
        headers["x-benchroute-routing-fallback"] = choice.routing_fallback
    if fell_back_from is not None:
        headers["x-benchroute-fallback-reason"] = f"{fell_back_from.model}: {fell_back_from.kind}"
    return headers


async def forward(
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
        "POST", f"{up.base_url}/chat/completions", content=json_bytes(body), headers=headers, timeout=timeout
    )
    resp: httpx.Response | None
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
            relay = relay_sse(state, resp, model)
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


async def relay_sse(state: AppState, resp: httpx.Response, model: str) -> AsyncIterator[bytes]:
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


__all__ = ["Choice", "UpstreamFailure", "forward", "json_bytes", "proxy", "relay_sse"]
