"""End-to-end tests of ``benchroute serve``: real uvicorn servers on 127.0.0.1, a real saved router,
a real OpenAI-compatible upstream (tests/upstream_app.py), driven by the official ``openai`` client.

The router is fitted on a tiny benchmark of three tasks with clearly different texts (arithmetic,
geography trivia, Python coding) where each model is right on its own task only, so a query from one
task must be routed to that task's model.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import httpx
import openai
import pandas as pd
import pytest
import uvicorn
import yaml

from benchroute.errors import ConfigError
from benchroute.server.app import create_app, serve
from benchroute.server.config import check_exposure, load_config, parse_config, resolve_config
from upstream_app import create_upstream_app  # tests/ is on sys.path (rootdir-relative, no __init__)

KEY = "test-key-0123456789abcdef"
UPSTREAM_KEY = "upstream-secret-abcdef0123456789"
MODELS = ["math-llm", "trivia-llm", "code-llm"]

CITIES = [
    "Paris",
    "Berlin",
    "Madrid",
    "Rome",
    "Lisbon",
    "Vienna",
    "Prague",
    "Warsaw",
    "Oslo",
    "Stockholm",
    "Helsinki",
    "Dublin",
    "Athens",
    "Budapest",
    "Brussels",
]
FUNCS = [
    ("reverse_list", "reverses a list"),
    ("is_prime", "checks if a number is prime"),
    ("fib", "returns the nth Fibonacci number"),
    ("flatten", "flattens nested lists"),
    ("count_words", "counts the words in a string"),
    ("merge_dicts", "merges two dictionaries"),
    ("parse_csv", "parses one CSV line"),
    ("unique", "removes duplicates from a list"),
    ("max_index", "returns the index of the maximum"),
    ("to_snake", "converts camelCase to snake_case"),
    ("chunk", "splits a list into chunks"),
    ("gcd", "computes the greatest common divisor"),
    ("palindrome", "checks whether a string is a palindrome"),
    ("transpose", "transposes a matrix"),
    ("sort_by_key", "sorts dicts by a key"),
]
TASKS = {
    "arithmetic": [
        f"What is {a} plus {b}? Compute the sum of the integers {a} and {b}."
        for a, b in zip(range(3, 18), range(40, 55), strict=True)
    ],
    "geography": [f"Trivia: which country is the city of {c} located in?" for c in CITIES],
    "coding": [f"Write a Python function named {n} that {d}." for n, d in FUNCS],
}
MATH_Q = "What is 21 plus 44? Compute the sum of the integers 21 and 44."
TRIVIA_Q = "Trivia: which country is the city of Lyon located in?"
CODE_Q = "Write a Python function named double_it that doubles every number in a list."


# ----------------------------------------------------------------------------------------- fixtures


def _write_tiny_benchmark(out: Path) -> Path:
    from benchroute.data.benchmark import write_benchmark

    items, scores = [], []
    for t, (task, texts) in enumerate(TASKS.items()):
        for i, text in enumerate(texts):
            items.append({"task": task, "item_id": str(i), "input": text})
            for j, m in enumerate(MODELS):
                scores.append({"task": task, "item_id": str(i), "model": m, "score": 1 if j == t else 0})
    models = pd.DataFrame(
        {
            "model": MODELS,
            "params_b": [7, 13, 70],
            "usd_per_mtok_in": [0.1, 0.5, 2.0],
            "usd_per_mtok_out": [0.2, 1.0, 4.0],
        }
    )
    return write_benchmark(out, pd.DataFrame(items), pd.DataFrame(scores), models)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    tmp = tmp_path_factory.mktemp("env")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCHROUTE_CACHE", str(tmp / "embeddings.sqlite"))
        mp.setenv("BR_TEST_KEYS", f"{KEY}, another-key-0123456789abcdef")
        mp.setenv("BR_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
        yield


@pytest.fixture(scope="module")
def router(env: None, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from benchroute.data.benchmark import load_benchmark
    from benchroute.router.estimator import Router

    tmp = tmp_path_factory.mktemp("router")
    bench = load_benchmark(_write_tiny_benchmark(tmp / "bench"))
    fitted = Router(embedding_model="all-MiniLM-L6-v2", repeats=2, alphas=(0.0, 0.1)).fit(bench)
    fitted.save(tmp / "router")
    return Router.load(tmp / "router")


class ServerThread:
    """A real uvicorn server on a loopback socket bound up front (port 0: no race for a port)."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        if hasattr(self.server.config.app, "state") and hasattr(self.server.config.app.state, "benchroute"):
            # benchroute answers at once and loads its embedding model in the background
            while httpx.get(f"{self.url}/readyz", timeout=10).status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not get ready")
                time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerThread]:
    with ServerThread(create_upstream_app()) as srv:
        yield srv


@pytest.fixture
def up(upstream: ServerThread) -> Iterator[Any]:
    state = upstream.server.config.app.state.upstream
    state.reset()
    yield state
    state.reset()


def _dead_url() -> str:
    """A loopback URL nobody listens on (the port was bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def _config(upstream: ServerThread, **over: Any) -> dict[str, Any]:
    base = f"{upstream.url}/v1"
    cfg: dict[str, Any] = {
        "models": {
            "math-llm": {"base_url": base, "model": "up-math", "api_key_env": "BR_TEST_UPSTREAM_KEY"},
            "trivia-llm": {"base_url": base, "model": "up-trivia"},
            "code-llm": {"base_url": base, "model": "up-code"},
            "extra-llm": {"base_url": base, "model": "up-extra", "passthrough": True},
        },
        "profiles": {"cheap": {"max_cost": 1.0}, "coder": {"model": "code-llm"}},
        "fallback_model": "trivia-llm",
        "auth": {"keys_env": "BR_TEST_KEYS"},
        "limits": {
            "max_body_bytes": 20_000,
            "max_inputs": 8,
            "max_input_chars": 2_000,
            "upstream_timeout_s": 1.5,
            "max_concurrency": 8,
        },
    }
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def server(router: Any, upstream: ServerThread) -> Iterator[ServerThread]:
    with ServerThread(create_app(router, parse_config(_config(upstream)))) as srv:
        yield srv


@pytest.fixture
def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=30)


def _post(srv: ServerThread, path: str, body: Any = None, key: str | None = KEY, **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    headers.update(kw.pop("headers", {}))
    return httpx.post(f"{srv.url}{path}", json=body, headers=headers, timeout=30, **kw)


def _chat(client: openai.OpenAI, text: str, model: str = "benchroute") -> tuple[Any, httpx.Headers]:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}]
    )
    return raw.parse(), raw.headers


# ------------------------------------------------------------------------------------- config file


def test_config_errors_name_the_field(env: None, tmp_path: Path, router: Any) -> None:
    base = {"models": {"math-llm": {"base_url": "http://127.0.0.1:9/v1"}}}

    def err(data: Any) -> str:
        with pytest.raises(ConfigError) as info:
            resolve_config(parse_config(data), router)
        return str(info.value)

    assert "models.math-llm.base_url" in err({"models": {"math-llm": {"base_url": "ftp://x"}}})
    assert "models.math-llm.base_url" in err({"models": {"math-llm": {"base_url": "not a url"}}})
    msg = err({"models": {"math-llm": {"base_url": "http://h/v1", "api_key_env": "BR_SURELY_UNSET_VAR"}}})
    assert "models.math-llm.api_key_env" in msg and "BR_SURELY_UNSET_VAR" in msg
    msg = err({"models": {"gpt-9": {"base_url": "http://h/v1"}}})
    assert "models.gpt-9" in msg and "unknown model 'gpt-9'" in msg and "math-llm" in msg
    assert "modles: unknown field" in err({"modles": {}})
    assert "models.math-llm.timeout: unknown field" in err(
        {"models": {"math-llm": {"base_url": "http://h/v1", "timeout": 3}}}
    )
    assert "profiles.p.candidates" in err({**base, "profiles": {"p": {"candidates": ["nope"]}}})
    assert "profiles.p.candidates" in err({**base, "profiles": {"p": {"candidates": ["code-llm"]}}})
    assert "profiles.p" in err({**base, "profiles": {"p": {"max_cost": 0.01}}})
    assert "profiles.p.model" in err({**base, "profiles": {"p": {"model": "code-llm"}}})
    assert "fallback_model" in err({**base, "fallback_model": "code-llm"})
    assert "limits.max_body_bytes" in err({"limits": {"max_body_bytes": -1}})
    assert "auth.keys_env" in err({"auth": {"keys_env": "BR_SURELY_UNSET_VAR"}})
    assert "auth.keys_file" in err({"auth": {"keys_file": str(tmp_path / "missing.txt")}})

    bad_yaml = tmp_path / "serve.yaml"
    bad_yaml.write_text("models:\n  a: [unclosed\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(bad_yaml)

    # keys are read once, kept secret and never shown
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# comment\nfile-key-0123456789abcdef\n")
    good = tmp_path / "good.yaml"
    good.write_text(
        yaml.safe_dump({**base, "auth": {"keys_env": "BR_TEST_KEYS", "keys_file": str(keys_file)}})
    )
    cfg = load_config(good)
    assert len(cfg.auth.key_bytes) == 3
    assert KEY not in repr(cfg) and "file-key" not in repr(cfg)
    resolved = resolve_config(cfg, router)
    assert resolved.fallback == router.models_[router.best_on_average_] == "math-llm"
    assert resolve_config(parse_config({**base, "fallback_model": None}), router).fallback is None

    # no auth: refused everywhere (loopback too: a reverse proxy in front makes it public) unless allowed
    open_cfg = parse_config(base)
    for host in ("127.0.0.1", "0.0.0.0"):
        with pytest.raises(ConfigError, match="auth"):
            check_exposure(open_cfg, host)
    check_exposure(parse_config({**base, "auth": {"allow_anonymous": True}}), "0.0.0.0")


def test_short_keys_and_serve_fails_before_listening(
    env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, router: Any
) -> None:
    monkeypatch.setenv("BR_SHORT_KEYS", "abc")
    with pytest.raises(ConfigError, match="shorter than 16"):
        parse_config({"auth": {"keys_env": "BR_SHORT_KEYS"}})
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"models": {"nope": {"base_url": "http://127.0.0.1:9/v1"}}, "auth": {"keys_env": "BR_TEST_KEYS"}}
        )
    )
    router_dir = tmp_path / "r"
    router.save(router_dir)
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        serve(router_dir, cfg, port=1)


# ------------------------------------------------------------------------------------- basics, auth


def test_healthz_open_models_listed_auth_required(server: ServerThread, client: openai.OpenAI) -> None:
    r = httpx.get(f"{server.url}/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    ids = [m.id for m in client.models.list()]
    assert ids[:3] == ["benchroute", "benchroute/cheap", "benchroute/coder"]
    assert set([*MODELS, "extra-llm"]) <= set(ids)

    for key in (None, "wrong-key-0123456789abcdef"):
        r = httpx.get(f"{server.url}/v1/models", headers={"authorization": f"Bearer {key}"} if key else {})
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"].startswith("Bearer")
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong-key-0123456789abcdef", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="benchroute", messages=[{"role": "user", "content": MATH_Q}])
    # the second key of the comma-separated list works too
    r = httpx.get(f"{server.url}/v1/models", headers={"authorization": "Bearer another-key-0123456789abcdef"})
    assert r.status_code == 200


# ------------------------------------------------------------------------------------------ chat


def test_chat_routes_each_query_to_its_task_model(client: openai.OpenAI, up: Any) -> None:
    for question, model, upstream_name in (
        (MATH_Q, "math-llm", "up-math"),
        (TRIVIA_Q, "trivia-llm", "up-trivia"),
        (CODE_Q, "code-llm", "up-code"),
    ):
        resp, headers = _chat(client, question)
        assert resp.model == model
        assert headers["x-benchroute-model"] == model
        assert resp.choices[0].message.content == f"{upstream_name} says hi"
        assert up.models_called()[-1] == upstream_name
    # the upstream got its own key (from api_key_env), never the client's benchroute key
    calls = {c["model"]: c for c in up.calls}
    assert calls["up-math"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert calls["up-trivia"]["authorization"] is None
    # everything but the model name is forwarded as sent
    assert calls["up-code"]["messages"] == [{"role": "user", "content": CODE_Q}]


def test_chat_streaming_is_relayed_chunk_by_chunk(client: openai.OpenAI, up: Any) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="benchroute",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": CODE_Q}],
        stream=True,
    )
    assert raw.headers["x-benchroute-model"] == "code-llm"
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    assert len(chunks) == 5  # role, three words, finish
    assert {c.model for c in chunks} == {"code-llm"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "up-code says hi"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert up.calls[-1]["model"] == "up-code" and up.calls[-1]["stream"] is True


def test_profiles_and_passthrough(client: openai.OpenAI, up: Any) -> None:
    # cheap: max_cost 1.0 excludes code-llm (3.0 USD/Mtok), so a code query goes elsewhere
    resp, _ = _chat(client, CODE_Q, "benchroute/cheap")
    assert resp.model in ("math-llm", "trivia-llm") and up.models_called()[-1] in ("up-math", "up-trivia")
    resp, _ = _chat(client, MATH_Q, "benchroute/coder")  # a fixed model
    assert resp.model == "code-llm" and up.models_called()[-1] == "up-code"
    resp, headers = _chat(client, MATH_Q, "extra-llm")  # pass-through by name
    assert resp.model == "extra-llm" and up.models_called()[-1] == "up-extra"
    assert headers["x-benchroute-model"] == "extra-llm"
    resp, _ = _chat(client, MATH_Q, "trivia-llm")  # a router model by name is not re-routed
    assert resp.model == "trivia-llm"
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "hi"}])


# -------------------------------------------------------------------------------------- limits


def test_oversized_body_is_413(server: ServerThread) -> None:
    big = {"model": "benchroute", "messages": [{"role": "user", "content": "x" * 30_000}]}
    r = _post(server, "/v1/chat/completions", big)
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies to the bytes read
        yield b'{"input": "'
        for _ in range(30):
            yield b"y" * 1000
        yield b'"}'

    r = httpx.post(
        f"{server.url}/v1/route",
        content=chunks(),
        timeout=30,
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    assert r.status_code == 413 and "exceeds 20000 bytes" in r.json()["error"]["message"]
    # input limits: too many inputs and too long an input
    assert _post(server, "/v1/route", {"input": [MATH_Q] * 9}).status_code == 413
    r = _post(server, "/v1/route", {"input": "z" * 2_001})
    assert r.status_code == 413 and "2001 characters" in r.json()["error"]["message"]


def test_invalid_bodies_are_422_with_a_clear_message(server: ServerThread, client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError, match="messages"):
        client.chat.completions.create(model="benchroute", messages=[])
    r = _post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 422 and "model: Field required" in r.json()["error"]["message"]
    r = _post(server, "/v1/chat/completions", content=b"{not json", key=KEY)
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]["message"]
    r = _post(server, "/v1/route", {"input": 5})
    body = r.json()["error"]
    assert (
        r.status_code == 422
        and body["message"].startswith("invalid request: input")
        and body["param"] == "input"
    )
    r = _post(server, "/v1/route", {"input": MATH_Q, "bogus": 1})
    assert r.status_code == 422 and "bogus: unknown field" in r.json()["error"]["message"]
    r = _post(server, "/v1/route", {"input": ["  "]})
    assert r.status_code == 422 and "empty" in r.json()["error"]["message"]
    r = _post(server, "/v1/route", {"input": MATH_Q, "candidates": ["gpt-nope"]})
    assert r.status_code == 422 and "unknown model 'gpt-nope'" in r.json()["error"]["message"]
    r = httpx.get(f"{server.url}/v1/nothing", headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


# ------------------------------------------------------------------------------- upstream failures


def test_upstream_error_or_timeout_falls_back(
    client: openai.OpenAI, up: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    up.fail, up.fail_models = "500", {"up-code"}
    resp, headers = _chat(client, CODE_Q)
    assert resp.model == "trivia-llm" and resp.choices[0].message.content == "up-trivia says hi"
    assert (
        headers["x-benchroute-model"] == "trivia-llm" and headers["x-benchroute-routed-model"] == "code-llm"
    )
    assert "code-llm" in headers["x-benchroute-fallback-reason"]
    assert up.models_called() == ["up-code", "up-trivia"]

    stream = client.chat.completions.create(
        model="benchroute", messages=[{"role": "user", "content": CODE_Q}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "up-trivia says hi"

    up.calls.clear()
    up.fail, up.delay_s = "slow", 3.0  # upstream_timeout_s is 1.5
    resp, headers = _chat(client, CODE_Q)
    assert resp.model == "trivia-llm" and up.models_called() == ["up-code", "up-trivia"]

    up.fail, up.fail_models = "500", None  # everything fails: 502 after one fallback try, as JSON
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="benchroute", messages=[{"role": "user", "content": CODE_Q}])
    assert info.value.status_code == 502
    err = info.value.body
    assert err["type"] == "upstream_error" and "fallback 'trivia-llm' failed too" in err["message"]
    # failures are logged by model name, without any key
    assert "upstream code-llm failed (upstream_error: HTTP 500)" in caplog.text
    assert KEY not in caplog.text and UPSTREAM_KEY not in caplog.text


def test_stream_cut_midway_ends_with_an_error_event(client: openai.OpenAI, up: Any) -> None:
    up.fail, up.fail_models = "cut", {"up-math"}
    stream = client.chat.completions.create(
        model="benchroute", messages=[{"role": "user", "content": MATH_Q}], stream=True
    )
    got = []
    with pytest.raises(openai.APIError, match="interrupted"):
        for chunk in stream:
            got.append(chunk.choices[0].delta.content)
    assert got[:2] == ["", "up-math"]


def test_upstream_down_uses_fallback_else_502(router: Any, upstream: ServerThread, up: Any) -> None:
    models = _config(upstream)["models"]
    models["code-llm"] = {"base_url": _dead_url(), "model": "up-code"}
    with ServerThread(
        create_app(router, parse_config(_config(upstream, models=models, fallback_model="math-llm")))
    ) as srv:
        c = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=KEY, max_retries=0)
        resp, headers = _chat(c, CODE_Q)
        assert resp.model == "math-llm" and headers["x-benchroute-routed-model"] == "code-llm"
        assert up.models_called() == ["up-math"]

    limits = {"max_concurrency": 1, "upstream_timeout_s": 10, "request_timeout_s": 2.5}
    cfg = _config(upstream, models=models, fallback_model=None, limits=limits)
    with ServerThread(create_app(router, parse_config(cfg))) as srv:
        r = _post(
            srv,
            "/v1/chat/completions",
            {"model": "benchroute", "messages": [{"role": "user", "content": CODE_Q}]},
        )
        assert r.status_code == 502
        assert r.json() == {
            "error": {
                "message": "upstream for 'code-llm' failed (connection failed); no fallback model configured",
                "type": "upstream_error",
                "code": "upstream_unreachable",
            }
        }
        assert r.headers["content-type"] == "application/json"

        # concurrency 1: a second request while the first waits on a slow upstream is rejected with 503
        up.fail, up.fail_models, up.delay_s = "slow", {"up-math"}, 1.0
        math_req = {"model": "benchroute", "messages": [{"role": "user", "content": MATH_Q}]}
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(_post, srv, "/v1/chat/completions", math_req)
            time.sleep(0.4)
            second = _post(srv, "/v1/chat/completions", math_req)
            assert second.status_code == 503 and second.headers["retry-after"] == "1"
            assert second.json()["error"]["type"] == "overloaded"
            assert first.result().status_code == 200
        # the whole request is bounded by limits.request_timeout_s
        up.delay_s = 4.0
        r = _post(srv, "/v1/chat/completions", math_req)
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"


# ------------------------------------------------------------------------------ route, recommend


def test_route_endpoint(server: ServerThread) -> None:
    r = _post(server, "/v1/route", {"input": [MATH_Q, TRIVIA_Q, CODE_Q]})
    assert r.status_code == 200
    data = r.json()["data"]
    assert [d["model"] for d in data] == MODELS
    assert [d["input_index"] for d in data] == [0, 1, 2]
    for d in data:
        assert set(d["per_model"]) == set(MODELS)
        assert d["per_model"][d["model"]] == max(d["per_model"].values()) == d["probability"]
        assert isinstance(d["reason"], str) and d["reason"]
    assert r.json()["best_on_average"] == "math-llm"

    r = _post(server, "/v1/route", {"input": MATH_Q, "candidates": ["trivia-llm", "code-llm"]})
    (d,) = r.json()["data"]
    assert set(d["per_model"]) == {"trivia-llm", "code-llm"} and d["model"] in d["per_model"]


def _close(a: Any, b: Any) -> bool:
    """Equal JSON, floats within 1e-5."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and abs(a - b) <= 1e-5
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_close, a, b))
    return bool(a == b)


def test_recommend_endpoint(server: ServerThread, router: Any) -> None:
    inputs = [
        "Write a Python function named reverse_words that reverses the words in a string.",
        "Write a Python function named dedupe that removes repeated items from a list.",
    ]
    r = _post(server, "/v1/recommend", {"inputs": inputs})
    assert r.status_code == 200
    rec = r.json()
    assert set(rec) >= {
        "chosen",
        "candidate",
        "best_on_average",
        "fell_back",
        "probability",
        "reason",
        "ranking",
        "nearest_tasks",
        "n_inputs",
    }
    assert rec["n_inputs"] == 2 and rec["n_labeled"] == 0 and rec["best_on_average"] == "math-llm"
    assert sorted(x["model"] for x in rec["ranking"]) == sorted(MODELS)
    assert rec["nearest_tasks"][0]["task"] == "coding"
    # same JSON as the library (and the CLI); the server embeds with ONNX Runtime when installed, the
    # same fp32 weights as the library's torch (cosine 1 - 1e-7), so floats agree to 1e-5
    library = json.loads(json.dumps(router.recommend(inputs).to_dict()))
    assert _close(rec, library), (rec, library)

    labeled = [
        {
            "input": "Write a Python function named sq that squares a number.",
            "correct": {"math-llm": 0, "trivia-llm": 0, "code-llm": 1},
        }
    ]
    r = _post(
        server,
        "/v1/recommend",
        {"inputs": inputs, "labeled": labeled, "candidates": ["code-llm", "math-llm"]},
    )
    rec = r.json()
    assert r.status_code == 200 and rec["n_labeled"] == 1 and rec["few_shot"]["code-llm"] == 1.0
    assert {x["model"] for x in rec["ranking"]} == {"code-llm", "math-llm"}

    bad = [{"input": "x", "correct": {"math-llm": 1}}]
    r = _post(server, "/v1/recommend", {"inputs": inputs, "labeled": bad})
    assert r.status_code == 422 and "lacks" in r.json()["error"]["message"]


# ------------------------------------------------------------------------------------------ metrics


def test_metrics_after_requests(server: ServerThread, client: openai.OpenAI, up: Any) -> None:
    _chat(client, MATH_Q)
    _post(server, "/v1/route", {"input": TRIVIA_Q})
    assert httpx.get(f"{server.url}/metrics").status_code == 401  # not open unless auth.open_metrics
    r = httpx.get(f"{server.url}/metrics", headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    lines = {
        ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln and ln[0] != "#"
    }
    assert (
        lines['benchroute_http_requests_total{method="POST",path="/v1/chat/completions",status="200"}'] >= 1
    )
    assert lines['benchroute_http_requests_total{method="GET",path="/metrics",status="401"}'] >= 1
    assert lines['benchroute_routed_total{endpoint="chat",model="math-llm"}'] >= 1
    assert lines['benchroute_routed_total{endpoint="route",model="trivia-llm"}'] >= 1
    assert lines['benchroute_upstream_requests_total{model="math-llm",outcome="ok"}'] >= 1
    assert lines['benchroute_http_request_duration_seconds_count{path="/v1/route"}'] >= 1
    assert 'benchroute_http_request_duration_seconds_bucket{path="/v1/route",le="+Inf"}' in lines
    assert "# TYPE benchroute_http_request_duration_seconds histogram" in text
    assert lines["benchroute_embedding_batches_total"] >= 1
    assert KEY not in text
    json.dumps(lines)  # every value parsed as a number
