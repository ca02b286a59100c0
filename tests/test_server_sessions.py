"""The session store of the proxy (bounded: cap, TTL, LRU) and which key names a session. The Router's
session API has not landed yet, so session *routing* is not wired; the key is validated and logged."""

from __future__ import annotations

import json
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


def test_session_key_over_http(server: ServerThread, up: Any, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    caplog.set_level("INFO", logger="benchroute.server.access")
    body = {"model": "benchroute", "messages": [{"role": "user", "content": MATH_Q}]}
    r = _post(server, "/v1/chat/completions", body, headers={"x-benchroute-session": "s" * 300})
    assert r.status_code == 422 and r.json()["error"]["param"] == "x-benchroute-session"
    r = _post(server, "/v1/chat/completions", {**body, "user": "alice"}, headers={"x-request-id": "sess-1"})
    assert r.status_code == 200
    assert up.calls[-1]["model"] == "up-math"
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "benchroute.server.access"]
    assert next(ln for ln in lines if ln["request_id"] == "sess-1")["session"] is True
