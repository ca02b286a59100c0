"""Safe and familiar defaults, against real uvicorn servers and the real ``openai`` client (set-up of
tests/test_server.py): auth from BENCHROUTE_API_KEYS by default and never silently open, CORS,
``/v1/models`` and ``/v1/models/{id}``, ``stream`` as a boolean, one 422 shape on every endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from benchroute.errors import ConfigError
from benchroute.server.app import create_app, serve
from benchroute.server.config import check_exposure, parse_config
from test_server import (  # tests/ is on sys.path; fixtures imported to be used here
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

ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def server(router: Any, upstream: ServerThread) -> Iterator[ServerThread]:  # noqa: F811
    cfg = _config(upstream, cors={"allow_origins": [ORIGIN]})
    with ServerThread(create_app(router, parse_config(cfg))) as srv:
        yield srv


def test_auth_defaults_to_benchroute_api_keys_and_is_never_silently_open(
    router: Any,  # noqa: F811
    upstream: ServerThread,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    cfg = _config(upstream)
    del cfg["auth"]
    monkeypatch.delenv("BENCHROUTE_API_KEYS", raising=False)
    # no key anywhere: refused on loopback as on any address, by serve() before it listens
    with pytest.raises(ConfigError, match="refusing to listen on loopback"):
        check_exposure(parse_config(cfg), "127.0.0.1")
    router_dir = tmp_path / "r"
    router.save(router_dir)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="BENCHROUTE_API_KEYS"):
        serve(router_dir, path, port=1)
    check_exposure(parse_config({**cfg, "auth": {"allow_anonymous": True}}), "127.0.0.1")  # explicit

    # the documented export alone turns auth on
    monkeypatch.setenv("BENCHROUTE_API_KEYS", "default-env-key-0123456789")
    parsed = parse_config(cfg)
    assert parsed.auth.enabled and parsed.auth.keys_env == "BENCHROUTE_API_KEYS"
    check_exposure(parsed, "127.0.0.1")
    with ServerThread(create_app(router, parsed)) as srv:
        assert httpx.get(f"{srv.url}/v1/models").status_code == 401
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="default-env-key-0123456789", max_retries=0)
        assert (
            client.chat.completions.create(
                model="benchroute", messages=[{"role": "user", "content": MATH_Q}]
            ).model
            == "math-llm"
        )
    monkeypatch.setenv("BENCHROUTE_API_KEYS", "  ")
    with pytest.raises(ConfigError, match="BENCHROUTE_API_KEYS is not set"):
        parse_config(cfg)


def test_cors_preflight_and_exposed_headers(server: ServerThread, up: Any) -> None:  # noqa: F811
    preflight = {
        "origin": ORIGIN,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type",
    }
    r = httpx.options(f"{server.url}/v1/chat/completions", headers=preflight)  # no key: answered anyway
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = httpx.options(
        f"{server.url}/v1/chat/completions", headers={**preflight, "origin": "https://evil.example"}
    )
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    body = {"model": "benchroute", "messages": [{"role": "user", "content": MATH_Q}]}
    r = _post(server, "/v1/chat/completions", body, headers={"origin": ORIGIN})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-benchroute-model" in r.headers["access-control-expose-headers"]


def test_no_cors_by_default(router: Any, upstream: ServerThread) -> None:  # noqa: F811
    with ServerThread(create_app(router, parse_config(_config(upstream)))) as srv:
        r = httpx.options(
            f"{srv.url}/v1/chat/completions",
            headers={"origin": ORIGIN, "access-control-request-method": "POST"},
        )
        assert "access-control-allow-origin" not in r.headers and r.status_code in (401, 405)


def test_models_list_what_can_be_called(router: Any, upstream: ServerThread) -> None:  # noqa: F811
    cfg = _config(upstream, profiles={"cheap": {"max_cost": 1.0}})
    del cfg["models"]["code-llm"]
    with ServerThread(create_app(router, parse_config(cfg))) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=KEY, max_retries=0)
        ids = [m.id for m in client.models.list()]
        assert ids == ["benchroute", "benchroute/cheap", "math-llm", "trivia-llm", "extra-llm"]
        assert client.models.retrieve("benchroute/cheap").id == "benchroute/cheap"
        card = client.models.retrieve("math-llm")
        assert card.id == "math-llm" and card.model_extra == {"routable": True, "upstream": True}
        assert client.models.retrieve("extra-llm").model_extra == {"routable": False, "upstream": True}
        with pytest.raises(openai.NotFoundError, match="without an upstream"):
            client.models.retrieve("code-llm")
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client.models.retrieve("gpt-nope")


def test_stream_must_be_a_boolean(server: ServerThread, up: Any) -> None:  # noqa: F811
    msgs = [{"role": "user", "content": MATH_Q}]
    for bad in ("true", 1, "yes"):
        r = _post(server, "/v1/chat/completions", {"model": "benchroute", "messages": msgs, "stream": bad})
        assert r.status_code == 422 and r.json()["error"]["param"] == "stream", bad
    r = _post(server, "/v1/chat/completions", {"model": "benchroute", "messages": msgs, "stream": None})
    assert r.status_code == 200 and r.json()["model"] == "math-llm"


def test_one_422_shape_on_every_endpoint(server: ServerThread) -> None:
    for path in ("/v1/route", "/v1/recommend", "/v1/chat/completions"):
        for raw in (b'{"input": "x",', b"[1, 2", b"\xff\xfe", b'{"a": NaN}'):
            r = _post(server, path, content=raw, headers={"content-type": "application/json"})
            err = r.json()["error"]
            assert r.status_code == 422, (path, raw, r.text)
            assert err["type"] == "invalid_request_error" and err["param"] == "body", (path, raw, err)
            assert err["message"].startswith("request body is not valid JSON")
        r = _post(server, path, [1, 2])
        assert r.status_code == 422 and r.json()["error"]["param"] == "body"
    for path, body, field in (
        ("/v1/route", {"input": 5}, "input"),
        ("/v1/recommend", {"inputs": 5}, "inputs"),
        ("/v1/chat/completions", {"model": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ):
        r = _post(server, path, body)
        err = r.json()["error"]
        assert (
            r.status_code == 422
            and err["param"] == field
            and err["message"].startswith(f"invalid request: {field}")
        ), (path, err)
