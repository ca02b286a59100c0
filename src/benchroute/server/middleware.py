"""The request guard, one pure ASGI layer: body-size limit, body deadline, concurrency limit and the
HTTP metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) so a streamed response is timed to its last byte and holds its
concurrency slot until the stream ends. Auth is a dependency of the routes (``deps.require_api_key``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

from benchroute.server.access import REQUEST_ID_HEADER, RequestRecord, access_log, request_id
from benchroute.server.errors import BodyTooLarge, error_response
from benchroute.server.state import AppState

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


def path_label(path: str) -> str:
    """The ``path`` label of the HTTP metrics: a known endpoint, else ``other`` (bounded cardinality)."""
    return path if path in KNOWN_PATHS else "other"


class GuardMiddleware:
    """Body-size limit, body deadline, concurrency limit and request metrics."""

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
        label = path_label(path)
        start = time.perf_counter()
        status = [500]
        given = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), None)
        record = RequestRecord(
            request_id(given.decode("latin-1") if given is not None else None), scope["method"], path
        )
        scope.setdefault("state", {})["record"] = record
        rid_header = (REQUEST_ID_HEADER.encode(), record.request_id.encode())

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                message["headers"] = [*message.get("headers", ()), rid_header]
            elif message["type"] == "http.response.body" and record.ttfb_ms is None and message.get("body"):
                record.ttfb_ms = (time.perf_counter() - start) * 1000
            await send(message)

        acquired = False
        try:
            rejection = self._check_length(scope)
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
                if await self._serve_until_disconnect(scope, body, receive, send_wrapper):
                    status[0] = 499  # the client left: its work was cancelled
                    st.metrics.inc("benchroute_http_cancelled_total", path=label)
                return
            await self.app(scope, self._limited(receive), send_wrapper)
        finally:
            if acquired:
                assert st.semaphore is not None
                st.semaphore.release()
                st.metrics.inc("benchroute_http_requests_in_flight", -1)
            elapsed = time.perf_counter() - start
            st.metrics.inc(
                "benchroute_http_requests_total", path=label, method=scope["method"], status=str(status[0])
            )
            st.metrics.observe("benchroute_http_request_duration_seconds", elapsed, path=label)
            if record.ttfb_ms is not None:
                st.metrics.observe("benchroute_time_to_first_byte_seconds", record.ttfb_ms / 1000, path=label)
            record.status, record.duration_ms = status[0], elapsed * 1000
            # one line per API request; the probes (/healthz, /readyz, /metrics) only at debug level
            access_log.log(logging.INFO if path.startswith("/v1/") else logging.DEBUG, "%s", record.line())

    async def _serve_until_disconnect(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> bool:
        """Run the app on an already read body; cancel it if the client disconnects before the
        response is complete, so abandoned work (queued embeddings, upstream calls) stops. True if
        it was cancelled."""
        disconnected = asyncio.Event()
        complete = False
        delivered = False

        async def app_receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def tracking_send(message: Message) -> None:
            nonlocal complete
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        app_task = asyncio.create_task(self.app(scope, app_receive, tracking_send))
        watcher = asyncio.create_task(watch())
        try:
            await asyncio.wait((app_task, watcher), return_when=asyncio.FIRST_COMPLETED)
            if not app_task.done() and not complete:
                app_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await app_task
                return True
            await app_task
            return False
        except asyncio.CancelledError:  # the server is shutting down: stop the app too
            app_task.cancel()
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

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


__all__ = ["KNOWN_PATHS", "GuardMiddleware", "path_label"]
