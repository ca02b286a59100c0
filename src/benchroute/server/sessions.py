"""Session state for session routing in the proxy: a bounded store, and which key names a session.

The key of a chat request is the ``x-benchroute-session`` header if given, else OpenAI's ``user``
field. The header wins: it is the explicit, benchroute-specific statement of "these requests are one
conversation", while ``user`` names an end user (OpenAI uses it for abuse monitoring), who may hold
several unrelated conversations.

The store keeps at most ``max_sessions`` states, drops one unused for ``ttl_s`` seconds, and evicts
the least recently used when full; keys are kept as SHA-256 digests, so memory per session is the
digest plus the router's small state object whatever the client sends.

Several replicas: route by key at the load balancer (consistent hashing on the
``x-benchroute-session`` header, or on ``user``). The state is an optimisation, not correctness: a
session that lands on another replica (or is evicted, or outlives a restart) starts again from
per-query routing, which is what a request without a session gets. Keeping the state outside the
process (Redis, ...) would add a network round trip and a read-modify-write race to the latency-critical
routing step of every request, for a gain that only lasts as long as the conversation.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from benchroute.server.errors import ApiError

SESSION_HEADER = "x-benchroute-session"
MAX_KEY_CHARS = 256

T = TypeVar("T")


def session_key(header: str | None, user: object) -> str | None:
    """The session key of a request: the header if non-blank, else a non-blank string ``user``."""
    for source, value in ((SESSION_HEADER, header), ("user", user)):
        if isinstance(value, str) and value.strip():
            if len(value) > MAX_KEY_CHARS:
                raise ApiError(
                    422, f"{source}: a session key has at most {MAX_KEY_CHARS} characters", param=source
                )
            return value.strip()
    return None


@dataclass
class RoutingSession:
    """The router's state of one session (``Router.new_session()``) and the lock that keeps its
    queries in order: ``Router.route(..., session=state)`` reads and updates it on a worker thread."""

    state: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


class SessionStore(Generic[T]):
    """At most ``max_sessions`` session states, each dropped after ``ttl_s`` seconds unused, the least
    recently used evicted first when full. Not thread-safe: used from the event loop only."""

    def __init__(self, max_sessions: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.clock = clock
        self.evicted = 0  # for the full store
        self.expired = 0
        self._items: OrderedDict[bytes, tuple[float, T]] = OrderedDict()

    @staticmethod
    def _digest(key: str) -> bytes:
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def get(self, key: str) -> T | None:
        """The state of ``key`` (refreshing its use), or None if absent or expired."""
        d = self._digest(key)
        item = self._items.get(d)
        if item is None:
            return None
        now = self.clock()
        if now - item[0] > self.ttl_s:
            del self._items[d]
            self.expired += 1
            return None
        self._items[d] = (now, item[1])
        self._items.move_to_end(d)
        return item[1]

    def put(self, key: str, state: T) -> None:
        d = self._digest(key)
        self._items[d] = (self.clock(), state)
        self._items.move_to_end(d)
        self._expire()
        while len(self._items) > self.max_sessions:
            self._items.popitem(last=False)
            self.evicted += 1

    def get_or_create(self, key: str, factory: Callable[[], T]) -> T:
        state = self.get(key)
        if state is None:
            state = factory()
            self.put(key, state)
        return state

    def _expire(self) -> None:
        """Drop expired sessions from the least recently used end (amortized O(1) per put)."""
        now = self.clock()
        while self._items:
            used, _ = next(iter(self._items.values()))
            if now - used <= self.ttl_s:
                break
            self._items.popitem(last=False)
            self.expired += 1


__all__ = ["MAX_KEY_CHARS", "SESSION_HEADER", "RoutingSession", "SessionStore", "session_key"]
