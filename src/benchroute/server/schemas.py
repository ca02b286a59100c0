"""Request bodies (pydantic) and the one strict JSON parser every POST endpoint uses.

Every body goes through :func:`parse_body`, so a body that is not JSON, is nested absurdly deep, or
has the wrong fields gets the same 422 shape on ``/v1/route``, ``/v1/recommend`` and
``/v1/chat/completions``, with the field named.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from benchroute.server.errors import ApiError, validation_message

MAX_JSON_DEPTH = 64


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | list[str] = Field(description="one query or a list of queries")
    candidates: list[str] | None = Field(default=None, description="restrict the choice to these models")

    @field_validator("input", mode="before")
    @classmethod
    def _str_or_list(cls, v: Any) -> Any:
        if isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            return v
        raise ValueError("must be a string or a list of strings")


class LabeledSample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str
    correct: dict[str, int] = Field(description="0/1 correctness of every router model on this input")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[str] = Field(min_length=1)
    labeled: list[LabeledSample] | None = None
    candidates: list[str] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """Only what the proxy needs; every other field is forwarded to the upstream untouched."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool | None = None  # a JSON boolean (or null), never "true" or 1


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON: use null or a finite number")


def parse_json(raw: bytes) -> Any:
    """A body as JSON, or 422: never an exception the caller has not thought of.

    Strict (no NaN/Infinity, which the upstream call could not encode) and at most
    ``MAX_JSON_DEPTH`` levels deep, so forwarding it can never hit Python's recursion limit.
    """
    try:
        payload = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(422, "request body is not valid JSON: nested too deeply", param="body") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN, an integer of over 4300 digits
        raise ApiError(422, f"request body is not valid JSON ({exc})", param="body") from None
    stack = [(payload, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict | list):
            if level > MAX_JSON_DEPTH:
                raise ApiError(
                    422, f"request body is nested deeper than {MAX_JSON_DEPTH} levels", param="body"
                )
            stack.extend((v, level + 1) for v in (value.values() if isinstance(value, dict) else value))
    return payload


M = TypeVar("M", bound=BaseModel)


def parse_body(raw: bytes, model: type[M]) -> tuple[dict[str, Any], M]:
    """The JSON object of a request body and its validated form (422 naming the field otherwise)."""
    payload = parse_json(raw)
    if not isinstance(payload, dict):
        raise ApiError(422, "request body must be a JSON object", param="body")
    try:
        return payload, model.model_validate(payload)
    except ValidationError as exc:
        msg, param = validation_message(exc.errors(include_url=False), skip_body=False)
        raise ApiError(422, msg, param=param) from None


__all__ = [
    "MAX_JSON_DEPTH",
    "ChatMessage",
    "ChatRequest",
    "LabeledSample",
    "RecommendRequest",
    "RouteRequest",
    "parse_body",
    "parse_json",
]
