"""One JSON error shape for every answer that is not a success: ``{"error": {"message", "type",
"param"?, "code"?}}`` (OpenAI's), whatever raised it: our own :class:`ApiError`, a validation error,
a :class:`~benchroute.errors.BenchrouteError` from the library, or a bug (500, details only in the log).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from benchroute.errors import BenchrouteError, ModelNotAvailableError

log = logging.getLogger("benchroute.server")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout",
}


class ApiError(StarletteHTTPException):
    """An HTTP error with an OpenAI-style ``type`` (and optional ``param``/``code``)."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.type = type_ or ERROR_TYPES.get(status, "error")
        self.param = param
        self.code = code


class BodyTooLarge(ApiError):
    """Raised from inside ``receive`` when a body without Content-Length exceeds the limit.

    A Starlette HTTPException subclass, so body parsing re-raises it instead of turning it into a
    400, and the exception handler answers 413.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes", param="body")


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"message": message, "type": type_}
    if param is not None:
        err["param"] = param
    if code is not None:
        err["code"] = code
    return {"error": err}


def error_response(
    status: int,
    message: str,
    type_: str | None = None,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(message, type_ or ERROR_TYPES.get(status, "error"), param, code),
        status_code=status,
        headers=headers,
    )


def validation_message(errors: Sequence[Any], skip_body: bool = True) -> tuple[str, str | None]:
    """``invalid request: <field>: <problem>; ...`` and the first field, from pydantic's errors."""
    parts, first = [], None
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ())]
        if skip_body and loc and loc[0] == "body":
            loc = loc[1:]
        where = ".".join(loc) or "body"
        first = first or (loc[0] if loc else "body")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{where}: {msg}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more, first


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, ApiError):
        return error_response(exc.status_code, str(exc.detail), exc.type, exc.param, exc.code, exc.headers)
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
    return error_response(exc.status_code, message, headers=exc.headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    msg, param = validation_message(exc.errors())
    return error_response(422, msg, "invalid_request_error", param)


async def benchroute_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ModelNotAvailableError):
        return error_response(503, str(exc), "service_unavailable")
    # ConfigError, DataError and the rest: what the request asked for cannot be done with this router
    return error_response(422, str(exc), "invalid_request_error")


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal server error (see the server log)", "server_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(BenchrouteError, benchroute_error)
    app.add_exception_handler(Exception, internal_error)


__all__ = [
    "ERROR_TYPES",
    "ApiError",
    "BodyTooLarge",
    "error_body",
    "error_response",
    "install_error_handlers",
    "validation_message",
]
