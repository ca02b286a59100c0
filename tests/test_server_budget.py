"""The routing budget, the two embedding lanes, cancellation of abandoned work and truncation to the
token window, against real uvicorn servers (set-up of tests/test_server.py: its tiny benchmark, the
upstream of tests/upstream_app.py, the real ``openai`` client).

No assertion here is about time: a budget of 0 ms makes the fallback certain, and the lanes are
checked by the order in which answers arrive.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
    _post,
    env,  # noqa: F401
    router,  # noqa: F401
    up,  # noqa: F401
    upstream,  # noqa: F401
)


def _metrics(srv: ServerThread) -> dict[str, float]:
    r = httpx.get(f"{srv.url}/metrics", headers={"authorization": f"Bearer {KEY}"}, timeout=30)
    assert r.status_code == 200
    return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in r.text.splitlines() if ln[:1] != "#"}


def _long_texts(n: int, words: int = 400) -> list[str]:
    """Distinct texts longer than MiniLM's 256-token window (so each costs a full forward pass)."""
    return [f"Document {i}: " + " ".join(f"token{i}x{j}" for j in range(words)) for i in range(n)]


@pytest.fixture
def budget0(router: Any, upstream: ServerThread) -> Iterator[ServerThread]:  # noqa: F811
    cfg = _config(upstream, routing={"budget_ms": 0})
    with ServerThread(create_app(router, parse_config(cfg))) as srv:
        yield srv


def test_budget_fallback_answers_with_best_on_average_and_says_so(budget0: ServerThread, up: Any) -> None:  # noqa: F811
    client = openai.OpenAI(base_url=f"{budget0.url}/v1", api_key=KEY, max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(
        model="benchroute", messages=[{"role": "user", "content": CODE_Q}]
    )
    # a budget of 0 ms: the query can never have started embedding, so routing gives way at once
    assert raw.headers["x-benchroute-routing-fallback"] == "routing_budget"
    assert raw.headers["x-benchroute-model"] == "math-llm"  # best on average, not code-llm
    assert raw.parse().choices[0].message.content == "up-math says hi"
    # the cheap profile falls back to ITS best-on-average candidate (code-llm is not one)
    raw = client.chat.completions.with_raw_response.create(
        model="benchroute/cheap", messages=[{"role": "user", "content": CODE_Q}]
    )
    assert raw.headers["x-benchroute-model"] in ("math-llm", "trivia-llm")
    m = _metrics(budget0)
    assert m['benchroute_routing_fallbacks_total{reason="routing_budget"}'] == 2
    # /v1/route has no budget: it always answers with the router's own decision
    r = _post(budget0, "/v1/route", {"input": CODE_Q})
    assert r.status_code == 200 and r.json()["data"][0]["model"] == "code-llm"


@pytest.fixture
def bulky(router: Any, upstream: ServerThread) -> Iterator[ServerThread]:  # noqa: F811
    limits = {"max_inputs": 64, "max_input_chars": 20_000, "max_body_bytes": 2_000_000}
    cfg = _config(
        upstream,
        limits={**_config(upstream)["limits"], **limits},
        embedding={"bulk_batch_size": 1},
        routing={"budget_ms": 60_000, "timeout_ms": 120_000},
    )
    with ServerThread(create_app(router, parse_config(cfg))) as srv:
        yield srv


def test_bulk_work_never_starves_chat_routing(bulky: ServerThread, up: Any) -> None:  # noqa: F811
    client = openai.OpenAI(base_url=f"{bulky.url}/v1", api_key=KEY, max_retries=0, timeout=120)
    inputs = _long_texts(48)
    with ThreadPoolExecutor(1) as pool:
        rec = pool.submit(
            httpx.post,
            f"{bulky.url}/v1/recommend",
            json={"inputs": inputs},
            headers={"authorization": f"Bearer {KEY}"},
            timeout=300,
        )
        while _metrics(bulky).get("benchroute_embedding_batches_total", 0) < 2:  # bulk work under way
            assert not rec.done(), rec.result().text
            time.sleep(0.05)
        raw = client.chat.completions.with_raw_response.create(
            model="benchroute", messages=[{"role": "user", "content": CODE_Q}]
        )
        # routed by the router itself (no fallback), and answered while the bulk request still runs
        assert "x-benchroute-routing-fallback" not in raw.headers
        assert raw.headers["x-benchroute-model"] == "code-llm"
        assert not rec.done()
        assert rec.result().status_code == 200


def test_abandoned_work_is_cancelled(bulky: ServerThread) -> None:
    inputs = _long_texts(48)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{bulky.url}/v1/recommend",
            json={"inputs": inputs},
            headers={"authorization": f"Bearer {KEY}"},
            timeout=httpx.Timeout(30, read=0.5),
        )
    deadline = time.monotonic() + 60
    while not _metrics(bulky).get('benchroute_http_cancelled_total{path="/v1/recommend"}'):
        assert time.monotonic() < deadline, "the server never noticed the client left"
        time.sleep(0.1)
    m = _metrics(bulky)
    # the texts still queued when the client left were dropped, never embedded
    dropped = m['benchroute_embedding_dropped_total{lane="bulk"}']
    assert dropped >= 1
    assert m["benchroute_embedded_texts_total"] + dropped <= len(inputs) + 2  # + the warm-up and slack
    assert m['benchroute_http_requests_total{method="POST",path="/v1/recommend",status="499"}'] == 1
    # and the server is not busy with them: a routed chat is answered by the router
    client = openai.OpenAI(base_url=f"{bulky.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    resp = client.chat.completions.create(model="benchroute", messages=[{"role": "user", "content": MATH_Q}])
    assert resp.model == "math-llm"


def test_routing_text_is_cut_to_the_token_window(bulky: ServerThread) -> None:
    (long,) = _long_texts(1, words=1500)  # ~17,000 characters, thousands of tokens; MiniLM reads 256
    first = _post(bulky, "/v1/route", {"input": long})
    assert first.status_code == 200
    before = _metrics(bulky)
    # the same text with a different tail beyond the window is the same query to the model: an LRU hit
    second = _post(bulky, "/v1/route", {"input": long[:-200] + " a different ending"})
    after = _metrics(bulky)
    assert second.json()["data"][0]["per_model"] == first.json()["data"][0]["per_model"]
    assert (
        after["benchroute_embedding_cache_hits_total"]
        == before.get("benchroute_embedding_cache_hits_total", 0) + 1
    )
    assert after["benchroute_embedded_texts_total"] == before["benchroute_embedded_texts_total"]
