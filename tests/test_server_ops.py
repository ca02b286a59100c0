"""The operator's view, against real uvicorn servers and the real ``openai`` client (set-up of
tests/test_server.py): request ids, the per-request log line, metrics, the circuit breaker and
readiness, 429 pass-through, and the headers of a 502."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from benchroute.server.app import create_app
from benchroute.server.config import parse_config
from test_server import (  # tests/ is on sys.path; fixtures imported to be used here
    CODE_Q,
    KEY,
    MATH_Q,
    ServerThread,
    _config,
    _dead_url,
    _post,
    env,  # noqa: F401
    router,  # noqa: F401
    up,  # noqa: F401
    upstream,  # noqa: F401
)


@pytest.fixture(scope="module")
def server(router: Any, upstream: ServerThread) -> Iterator[ServerThread]:  # noqa: F811
    with ServerThread(create_app(router, parse_config(_config(upstream)))) as srv:
        yield srv


def _client(srv: ServerThread, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key=KEY, max_retries=0, timeout=60, **kw)


def _metrics(srv: ServerThread) -> dict[str, float]:
    r = httpx.get(f"{srv.url}/metrics", headers={"authorization": f"Bearer {KEY}"}, timeout=30)
    return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in r.text.splitlines() if ln[:1] != "#"}


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "benchroute.server.access"]


def test_request_ids_are_echoed_and_forwarded(server: ServerThread, up: Any) -> None:  # noqa: F811
    client = _client(server)
    raw = client.chat.completions.with_raw_response.create(
        model="benchroute",
        messages=[{"role": "user", "content": MATH_Q}],
        extra_headers={"x-request-id": "req-abc.123"},
    )
    assert raw.headers["x-request-id"] == "req-abc.123"
    assert up.calls[-1]["request_id"] == "req-abc.123"
    # none given: one is generated, echoed and forwarded
    raw = client.chat.completions.with_raw_response.create(
        model="benchroute", messages=[{"role": "user", "content": MATH_Q}]
    )
    rid = raw.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid) and up.calls[-1]["request_id"] == rid
    # an unsafe one (spaces, over-long) is replaced, never echoed
    for bad in ("a b", "x" * 200):
        r = _post(server, "/v1/route", {"input": MATH_Q}, headers={"x-request-id": bad})
        assert r.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    # errors carry it too
    r = _post(server, "/v1/route", {"input": 5}, headers={"x-request-id": "bad-body-1"})
    assert r.status_code == 422 and r.headers["x-request-id"] == "bad-body-1"


def test_one_structured_log_line_per_request(
    server: ServerThread,
    up: Any,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="benchroute.server.access")
    client = _client(server)
    client.chat.completions.create(
        model="benchroute",
        messages=[{"role": "user", "content": MATH_Q}],
        extra_headers={"x-request-id": "log-line-1"},
    )
    stream = client.chat.completions.create(
        model="benchroute",
        messages=[{"role": "user", "content": CODE_Q}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-request-id": "log-line-2"},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "up-code says hi"
    deadline = time.monotonic() + 30  # the line of a stream is written after its last byte is sent
    while "log-line-2" not in (lines := {ln["request_id"]: ln for ln in _access_lines(caplog)}):
        assert time.monotonic() < deadline, "no access line for the stream"
        time.sleep(0.05)
    one, two = lines["log-line-1"], lines["log-line-2"]
    assert one["path"] == "/v1/chat/completions" and one["status"] == 200
    assert one["requested_model"] == "benchroute"
    assert one["routed_model"] == one["model"] == "math-llm"
    assert one["prompt_tokens"] == 3 and one["completion_tokens"] == 3
    # math-llm costs (0.1 + 0.2) / 2 USD per Mtok in models.csv
    assert one["cost_usd"] == pytest.approx(6 * 0.15 / 1e6)
    for key in ("routing_ms", "upstream_ms", "ttfb_ms", "duration_ms"):
        assert one[key] >= 0
    assert "routing_fallback" not in one and "upstream_fallback" not in one
    # a stream: tokens from its usage chunk, cost at code-llm's price (3.0)
    assert two["model"] == "code-llm" and two["prompt_tokens"] == 3
    assert two["cost_usd"] == pytest.approx(6 * 3.0 / 1e6)
    assert KEY not in caplog.text


def test_metrics_per_model_latency_tokens_cost(server: ServerThread, up: Any) -> None:  # noqa: F811
    client = _client(server)
    before = _metrics(server)
    client.chat.completions.create(model="benchroute", messages=[{"role": "user", "content": MATH_Q}])
    m = _metrics(server)

    def grew(key: str, by: float = 1) -> bool:
        return m.get(key, 0) == pytest.approx(before.get(key, 0) + by)

    assert grew('benchroute_upstream_requests_total{model="math-llm",outcome="ok"}')
    assert grew('benchroute_tokens_total{kind="prompt",model="math-llm"}', 3)
    assert grew('benchroute_tokens_total{kind="completion",model="math-llm"}', 3)
    assert grew('benchroute_cost_usd_total{model="math-llm"}', 6 * 0.15 / 1e6)
    assert grew('benchroute_routing_duration_seconds_count{outcome="routed"}')
    assert grew('benchroute_upstream_duration_seconds_count{model="math-llm"}')
    assert grew('benchroute_time_to_first_byte_seconds_count{path="/v1/chat/completions"}')


def test_429_passes_through_by_name_and_falls_back_when_routed(
    server: ServerThread,
    up: Any,  # noqa: F811
) -> None:
    client = _client(server)
    up.fail, up.fail_models = "429", {"up-code"}
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="code-llm", messages=[{"role": "user", "content": CODE_Q}])
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.response.headers["x-benchroute-model"] == "code-llm"
    assert info.value.body["message"] == "slow down"
    # routed to code-llm: the fallback (trivia-llm) answers instead
    raw = client.chat.completions.with_raw_response.create(
        model="benchroute", messages=[{"role": "user", "content": CODE_Q}]
    )
    assert raw.headers["x-benchroute-model"] == "trivia-llm"
    assert raw.headers["x-benchroute-fallback-reason"] == "code-llm: upstream_rate_limited"


def test_circuit_breaker_and_readiness(router: Any, upstream: ServerThread, up: Any) -> None:  # noqa: F811
    cfg = _config(upstream, circuit_breaker={"failures": 2, "cooldown_s": 600})
    cfg["models"]["code-llm"] = {"base_url": _dead_url(), "model": "up-code"}
    with ServerThread(create_app(router, parse_config(cfg))) as srv:
        client = _client(srv)
        assert httpx.get(f"{srv.url}/readyz").json()["upstreams"]["code-llm"] == "closed"
        for _ in range(3):
            raw = client.chat.completions.with_raw_response.create(
                model="benchroute", messages=[{"role": "user", "content": CODE_Q}]
            )
            assert raw.headers["x-benchroute-model"] == "trivia-llm"
        m = _metrics(srv)
        # two connection failures opened the circuit; the third request did not try the dead upstream
        assert m['benchroute_upstream_requests_total{model="code-llm",outcome="error"}'] == 2
        assert m['benchroute_upstream_requests_total{model="code-llm",outcome="circuit_open"}'] == 1
        assert m['benchroute_upstream_circuit_open{model="code-llm"}'] == 1
        assert raw.headers["x-benchroute-fallback-reason"] == "code-llm: circuit_open"
        ready = httpx.get(f"{srv.url}/readyz")
        assert ready.status_code == 200 and ready.json()["upstreams"]["code-llm"] == "open"

    dead = {m: {"base_url": _dead_url(), "model": f"up-{m}"} for m in ("math-llm", "trivia-llm", "code-llm")}
    cfg = _config(upstream, models=dead, circuit_breaker={"failures": 1, "cooldown_s": 600})
    with ServerThread(create_app(router, parse_config(cfg))) as srv:
        r = _post(
            srv,
            "/v1/chat/completions",
            {"model": "benchroute", "messages": [{"role": "user", "content": CODE_Q}]},
        )
        # a 502 names the models involved in its headers too
        assert r.status_code == 502
        assert r.headers["x-benchroute-routed-model"] == "code-llm"
        assert r.headers["x-benchroute-model"] == "trivia-llm"
        assert r.headers["x-benchroute-fallback-reason"] == "code-llm: upstream_unreachable"
        _post(
            srv,
            "/v1/chat/completions",
            {"model": "math-llm", "messages": [{"role": "user", "content": "hi"}]},
        )
        ready = httpx.get(f"{srv.url}/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert set(ready.json()["upstreams"].values()) == {"open"}
        assert httpx.get(f"{srv.url}/healthz").status_code == 200  # alive, just not ready
