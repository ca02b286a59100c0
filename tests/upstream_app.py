"""A small, real OpenAI-compatible upstream for the server tests (run it with its own uvicorn).

It answers ``POST /v1/chat/completions`` with a reply naming the upstream model that was called
(``"<model> says hi"``), streams that reply word by word as SSE when ``stream`` is true, records
every call, and can be told to fail:

* ``app.state.upstream.fail = "500"``      answer HTTP 500
* ``app.state.upstream.fail = "slow"``     sleep ``delay_s`` before answering (to trip timeouts)
* ``app.state.upstream.fail = "cut"``      stream two chunks, then drop the connection
* ``app.state.upstream.fail = "429"``      answer HTTP 429 with ``Retry-After: 7``
* ``POST /control {"fail": ..., "delay_s": ...}`` does the same over HTTP.

``fail_models`` restricts the failure to some upstream model names.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


@dataclass
class UpstreamState:
    calls: list[dict[str, Any]] = field(default_factory=list)
    fail: str | None = None
    fail_models: set[str] | None = None
    delay_s: float = 5.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def failing(self, model: str) -> str | None:
        if self.fail and (self.fail_models is None or model in self.fail_models):
            return self.fail
        return None

    def models_called(self) -> list[str]:
        with self.lock:
            return [c["model"] for c in self.calls]

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
        self.fail, self.fail_models, self.delay_s = None, None, 5.0


def _completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
    }


def _chunk(
    model: str, delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None
) -> bytes:
    obj: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def create_upstream_app() -> FastAPI:
    app = FastAPI()
    state = UpstreamState()
    app.state.upstream = state

    @app.post("/control")
    async def control(request: Request) -> dict[str, Any]:
        body = await request.json()
        state.fail = body.get("fail")
        state.delay_s = float(body.get("delay_s", state.delay_s))
        models = body.get("fail_models")
        state.fail_models = set(models) if models else None
        return {"ok": True}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        model = body.get("model", "")
        stream = bool(body.get("stream"))
        with state.lock:
            state.calls.append(
                {
                    "model": model,
                    "stream": stream,
                    "messages": body.get("messages"),
                    "authorization": request.headers.get("authorization"),
                    "request_id": request.headers.get("x-request-id"),
                }
            )
        mode = state.failing(model)
        if mode == "500":
            return JSONResponse({"error": {"message": "upstream exploded", "type": "server_error"}}, 500)
        if mode == "429":
            return JSONResponse(
                {"error": {"message": "slow down", "type": "rate_limit_error"}}, 429, {"Retry-After": "7"}
            )
        if mode == "slow":
            await asyncio.sleep(state.delay_s)
        text = f"{model} says hi"
        if not stream:
            return _completion(model, text)

        async def events() -> Any:
            yield _chunk(model, {"role": "assistant", "content": ""})
            for i, word in enumerate(text.split(" ")):
                yield _chunk(model, {"content": word if i == 0 else " " + word})
                await asyncio.sleep(0)
                if mode == "cut" and i == 1:
                    raise RuntimeError("connection dropped on purpose")
            yield _chunk(model, {}, "stop")
            if (body.get("stream_options") or {}).get("include_usage"):
                yield _chunk(model, {}, usage={"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
