"""The operator's view of one request: its id, and one structured log line when it ends.

:class:`RequestRecord` travels with the request (``request.state.record``); the guard middleware
creates it, the handlers fill in what they learn (routed and answered model, fallbacks, timings,
tokens, cost) and the middleware writes it as one JSON line on the ``benchroute.server.access``
logger when the last byte has been sent.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import asdict, dataclass
from typing import Any

access_log = logging.getLogger("benchroute.server.access")

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def request_id(given: str | None) -> str:
    """The client's ``x-request-id`` if it is a sane token (<= 128 safe characters), else a new one."""
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


@dataclass
class RequestRecord:
    """What one request did (``None``: did not apply). Times in milliseconds."""

    request_id: str
    method: str
    path: str
    status: int | None = None
    requested_model: str | None = None
    routed_model: str | None = None
    model: str | None = None  # the model that answered
    routing_fallback: str | None = None  # why routing gave way to the best-on-average model
    upstream_fallback: str | None = None  # "<model>: <kind>" when the fallback model answered
    session: bool | None = None  # a session key was given
    session_queries: int | None = None  # earlier queries of the session the routing used
    routing_ms: float | None = None
    upstream_ms: float | None = None
    ttfb_ms: float | None = None
    duration_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None

    def line(self) -> str:
        fields: dict[str, Any] = {k: v for k, v in asdict(self).items() if v is not None}
        for k in ("routing_ms", "upstream_ms", "ttfb_ms", "duration_ms"):
            if k in fields:
                fields[k] = round(fields[k], 2)
        if "cost_usd" in fields:
            fields["cost_usd"] = float(f"{fields['cost_usd']:.6g}")
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


__all__ = ["REQUEST_ID_HEADER", "RequestRecord", "access_log", "request_id"]
