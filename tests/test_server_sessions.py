"""Session routing in the proxy: the bounded store (cap, TTL, LRU), which key names a session, and
session routing end to end (real uvicorn servers, the set-up of tests/test_server.py): each routed
query of a session is routed with the evidence of that session's earlier queries."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from benchroute.server.app import create_app
from benchroute.server.config import parse_config
from benchroute.server.errors import ApiError
from benchroute.server.sessions import SessionStore, session_key
from test_server import (  # tests/ is on sys.path; fixtures imported to be used here
    MATH_Q,
    ServerThread,
    _config,
    _post,
    env,  # noqa: F401
    router,  # noqa: F401
    up,  # noqa: F401
    upstream,  # noqa: F401
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_store_is_bounded_lru() -> None:
    store: SessionStore[list[int]] = SessionStore(max_sessions=3, ttl_s=100, clock=Clock())
    for k in "abc":
        store.put(k, [ord(k)])
    assert store.get("a") == [97]  # a is now the most recently used
    store.put("d", [100])
    assert "b" not in store and len(store) == 3 and store.evicted == 1
    assert [k for k in "acd" if k in store] == ["a", "c", "d"]
    for i in range(10_000):  # memory stays bounded whatever clients send
        store.put(f"key-{i}", [i])
    assert len(store) == 3 and store.get("key-9999") == [9999]


def test_store_expires_unused_sessions() -> None:
    clock = Clock()
    store: SessionStore[str] = SessionStore(max_sessions=10, ttl_s=60, clock=clock)
    store.put("old", "x")
    store.put("kept", "y")
    clock.now = 50
    assert store.get("kept") == "y"  # used at 50: lives until 110
    clock.now = 70
    assert store.get("old") is None and store.expired == 1
    store.put("new", "z")
    clock.now = 115
    store.put("newer", "w")  # a put sweeps the expired from the LRU end
    assert "kept" not in store and store.get("new") == "z"
    created = []
    assert store.get_or_create("fresh", lambda: created.append(1) or "s") == "s"
    assert store.get_or_create("fresh", lambda: "other") == "s" and created == [1]


def test_session_key_header_wins_over_user() -> None:
    assert session_key("conv-1", "alice") == "conv-1"
    assert session_key(None, "alice") == "alice"
    assert session_key("  ", "alice") == "alice"
    assert session_key(None, None) is None and session_key(None, 42) is None and session_key("", "") is None
    with pytest.raises(ApiError, match="at most 256"):
        session_key("k" * 257, None)


@pytest.fixture(scope="module")
def server(router: Any, upstream: ServerThread) -> Iterator[ServerThread]:  # noqa: F811
    with ServerThread(create_app(router, parse_config(_config(upstream)))) as srv:
        yield srv


def _session_queries(caplog: pytest.LogCaptureFixture, rid: str) -> int | None:
    deadline = time.monotonic() + 30  # the line is written once the last byte is sent
    while True:
        for rec in caplog.records:
            if rec.name == "benchroute.server.access":
                line = json.loads(rec.getMessage())
                if line["request_id"] == rid:
                    assert line["session"] is True and line["status"] == 200, line
                    return line.get("session_queries")
        assert time.monotonic() < deadline, f"no access line for {rid}"
        time.sleep(0.05)


def _session_chat(srv: ServerThread, rid: str, header: str | None = None, user: str | None = None) -> None:
    body: dict[str, Any] = {"model": "benchroute", "messages": [{"role": "user", "content": MATH_Q + rid}]}
    if user is not None:
        body["user"] = user
    headers = {"x-request-id": rid, **({"x-benchroute-session": header} if header else {})}
    r = _post(srv, "/v1/chat/completions", body, headers=headers)
    assert r.status_code == 200, r.text


def test_session_routing_over_http(server: ServerThread, up: Any, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    caplog.set_level("INFO", logger="benchroute.server.access")
    body = {"model": "benchroute", "messages": [{"role": "user", "content": MATH_Q}]}
    r = _post(server, "/v1/chat/completions", body, headers={"x-benchroute-session": "s" * 300})
    assert r.status_code == 422 and r.json()["error"]["param"] == "x-benchroute-session"
    for i in range(3):  # each query is routed with the evidence of the session's earlier ones
        _session_chat(server, f"conv-a-{i}", header="conv-a")
        assert _session_queries(caplog, f"conv-a-{i}") == i
    _session_chat(server, "alice-0", user="alice")  # no header: OpenAI's user field names it
    _session_chat(server, "alice-1", user="alice")
    assert _session_queries(caplog, "alice-1") == 1
    _session_chat(server, "both", header="conv-a", user="alice")  # the header wins
    assert _session_queries(caplog, "both") == 3
    assert up.calls[-1]["messages"][0]["content"] == MATH_Q + "both"  # forwarded as sent


def test_sessions_are_bounded_in_the_server(
    router: Any,  # noqa: F811
    upstream: ServerThread,  # noqa: F811
    up: Any,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="benchroute.server.access")
    with ServerThread(
        create_app(router, parse_config(_config(upstream, sessions={"max_sessions": 1})))
    ) as srv:
        for rid, key in (("b-1", "a"), ("b-2", "b"), ("b-3", "a"), ("b-4", "a")):
            _session_chat(srv, rid, header=key)
        # one session kept: "b" evicted "a", so a starts over; then a continues
        assert [_session_queries(caplog, r) for r in ("b-1", "b-2", "b-3", "b-4")] == [0, 0, 0, 1]
