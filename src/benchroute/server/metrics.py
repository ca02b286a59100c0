"""A small Prometheus registry (counters, gauges, histograms) rendered in text format 0.0.4.

Thread-safe (the embedding worker and the request handlers both count); no dependency on a client
library, since the server needs a dozen series and nothing else.
"""

from __future__ import annotations

import math
import threading


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: tuple[tuple[str, str], ...], extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class Metrics:
    """A tiny Prometheus registry (counters, gauges, histograms) rendered in text format 0.0.4."""

    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._meta: dict[str, tuple[str, str]] = {}
        self._values: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._hists: dict[str, dict[tuple[tuple[str, str], ...], list[float]]] = {}

    def _declare(self, name: str, kind: str, help_: str) -> None:
        if name not in self._meta:
            self._meta[name] = (kind, help_)
            (self._hists if kind == "histogram" else self._values)[name] = {}

    def counter(self, name: str, help_: str) -> None:
        self._declare(name, "counter", help_)

    def gauge(self, name: str, help_: str) -> None:
        self._declare(name, "gauge", help_)

    def histogram(self, name: str, help_: str) -> None:
        self._declare(name, "histogram", help_)

    def inc(self, name: str, value: float = 1.0, /, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + value

    def set(self, name: str, value: float, /, **labels: str) -> None:
        with self._lock:
            self._values[name][tuple(sorted(labels.items()))] = value

    def observe(self, name: str, value: float, /, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._hists[name]
            h = series.get(key)
            if h is None:
                h = series[key] = [0.0] * (len(self.BUCKETS) + 2)  # buckets..., sum, count
            for i, b in enumerate(self.BUCKETS):
                if value <= b:
                    h[i] += 1
            h[-2] += value
            h[-1] += 1

    def value(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            for name, (kind, help_) in self._meta.items():
                out.append(f"# HELP {name} {help_}")
                out.append(f"# TYPE {name} {kind}")
                if kind == "histogram":
                    for key, h in sorted(self._hists[name].items()):
                        for i, b in enumerate(self.BUCKETS):
                            out.append(f"{name}_bucket{_labels(key, (('le', _num(b)),))} {_num(h[i])}")
                        out.append(f"{name}_bucket{_labels(key, (('le', '+Inf'),))} {_num(h[-1])}")
                        out.append(f"{name}_sum{_labels(key)} {_num(h[-2])}")
                        out.append(f"{name}_count{_labels(key)} {_num(h[-1])}")
                else:
                    for key, v in sorted(self._values[name].items()):
                        out.append(f"{name}{_labels(key)} {_num(v)}")
        return "\n".join(out) + "\n"


def new_metrics() -> Metrics:
    """The registry of ``benchroute serve`` with every series declared (docs/server.md lists them)."""
    m = Metrics()
    m.counter("benchroute_http_requests_total", "HTTP requests by path, method and status code.")
    m.histogram("benchroute_http_request_duration_seconds", "Time to the end of the response, by path.")
    m.counter("benchroute_http_cancelled_total", "Requests whose client left first (their work cancelled).")
    m.gauge("benchroute_http_requests_in_flight", "Requests being served now (limited by max_concurrency).")
    m.counter("benchroute_routed_total", "Models chosen, by endpoint (route, chat, recommend) and model.")
    m.counter(
        "benchroute_upstream_requests_total", "Upstream chat calls by model and outcome (ok or the error)."
    )
    m.histogram(
        "benchroute_routing_duration_seconds", "Routing a chat request (embedding + kNN), by outcome."
    )
    m.histogram("benchroute_upstream_duration_seconds", "Upstream calls, to the end of the answer, by model.")
    m.histogram(
        "benchroute_time_to_first_byte_seconds", "From the request to the first byte of the answer, by path."
    )
    m.counter(
        "benchroute_tokens_total", "Tokens the upstreams reported, by model and kind (prompt, completion)."
    )
    m.counter(
        "benchroute_cost_usd_total", "Cost in USD of the answered tokens (serve.yaml or models.csv prices)."
    )
    m.gauge(
        "benchroute_upstream_circuit_open", "1 while the circuit breaker of the model's upstream is open."
    )
    m.counter("benchroute_upstream_fallbacks_total", "Upstream failures retried on the fallback model.")
    m.counter("benchroute_embedding_batches_total", "Forward passes of the embedding model.")
    m.counter("benchroute_embedded_texts_total", "Texts embedded (LRU misses).")
    m.counter("benchroute_embedding_cache_hits_total", "Texts served from the in-memory embedding LRU.")
    m.counter(
        "benchroute_embedding_dropped_total", "Queued texts dropped before embedding: every waiter left."
    )
    m.counter(
        "benchroute_routing_fallbacks_total",
        "Chat requests sent to the profile's fallback because routing did not fit its budget, by reason.",
    )
    return m


__all__ = ["Metrics", "new_metrics"]
