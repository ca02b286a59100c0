"""A circuit breaker per upstream model, so a dead upstream does not cost its full timeout on every
request.

After ``failures`` consecutive failures (connection error, timeout, HTTP 5xx; a 429 means the
upstream is alive) the circuit opens: calls to that model fail at once (and go to the fallback) for
``cooldown_s``. Then one trial call is let through (half-open): success closes the circuit, failure
opens it for another cooldown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class CircuitBreaker:
    failures: int = 5
    cooldown_s: float = 15.0
    consecutive: int = 0
    opened_at: float | None = None
    trial_in_flight: bool = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open``."""
        if self.opened_at is None:
            return "closed"
        return "half_open" if time.monotonic() >= self.opened_at + self.cooldown_s else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self.consecutive, self.opened_at, self.trial_in_flight = 0, None, False

    def record_failure(self) -> bool:
        """Count a failure; True if this one opened the circuit."""
        self.consecutive += 1
        if self.trial_in_flight or self.consecutive >= self.failures:
            self.opened_at, self.trial_in_flight = time.monotonic(), False
            return True
        return False


__all__ = ["CircuitBreaker"]
