"""Serving benchmark: every figure of the serving issue, for this tree and (``--baseline REF``) for an
older commit, each measured in one run of its own, printed side by side with ratios.

Per state (a source tree):

1. ``benchroute fit llmrouter`` (that tree's code; all-mpnet-base-v2 from the bundled pack) into a
   temporary directory, then ``benchroute serve`` (that tree's CLI, auth on) in a child process, in
   front of a local fake OpenAI-compatible upstream (tests/upstream_app.py, the same for every state).
2. Startup: seconds from spawning ``serve`` to ``/healthz`` answering 200, and to ready (``/readyz``
   200 where it exists, else the first 200 of ``/healthz``: the old server loaded the model first).
3. Latency and throughput with httpx on loopback:
   upstream direct (p50, 1 in flight); pass-through via benchroute (model named, p50 at 1 in flight,
   req/s at 16 in flight); routed repeated query (LRU hit, p50); routed distinct queries (p50 and p99
   at 1 in flight; req/s, p50, p99 and the share the router itself routed at 16 in flight); the
   routing overhead (routed distinct p50 minus pass-through p50); single-query ``/v1/route`` with
   distinct queries at 16 in flight (the raw routing capacity: no budget applies there).
4. Head-of-line blocking: a ``/v1/recommend`` of 12 inputs of 2,300 characters abandoned by its
   client after 1 s, then a short routed chat (its latency and status); 6 and 8 chats of 17,000
   characters in flight, then a short routed chat (its latency, status, and whether routing fell back).

    python benchmarks/bench_serve.py --baseline bd12bdf      # before (bd12bdf) and after (this tree)
    python benchmarks/bench_serve.py                         # this tree only

Only loopback addresses are used. ``limits.request_timeout_s`` is 20 s in both states, as in the
issue's measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLI = "from benchroute.cli.commands import app; app()"
TOPICS = (
    "What is {a} plus {b}? Compute the sum of the integers {a} and {b}.",
    "Trivia: which country is the city number {a} on list {b} located in?",
    "Write a Python function named f{a}_{b} that sorts a list of {a} numbers in {b} passes.",
    "Translate into French: 'the {a} cats sat on {b} mats near the river'.",
    "A train leaves at {a}:00 and travels {b} km at 80 km/h. When does it arrive?",
)


def queries(n: int, offset: int = 0) -> list[str]:
    return [TOPICS[i % len(TOPICS)].format(a=i + offset, b=(7 * i + offset) % 101) for i in range(n)]


def long_text(i: int, chars: int) -> str:
    words = [f"w{i}x{j}" for j in range(chars // 6 + 10)]
    return f"Summarize document {i}: " + " ".join(words)[:chars]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, deadline: float, proc: subprocess.Popen[bytes]) -> float:
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return time.perf_counter()
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{url} never answered 200")
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ load


def stats(
    latencies: list[float], wall: float, errors: int, extra: dict[str, float] | None = None
) -> dict[str, float]:
    lat = np.array(latencies) * 1000
    out = {
        "n": float(len(lat)),
        "rps": len(lat) / wall,
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "errors": float(errors),
    }
    return {**out, **(extra or {})}


async def closed_loop(
    client: httpx.AsyncClient, url: str, bodies: list[dict[str, Any]], concurrency: int
) -> dict[str, float]:
    """Every body once, ``concurrency`` in flight; latency per request, errors, routed share."""
    latencies: list[float] = []
    errors = fell_back = 0
    it = iter(bodies)

    async def worker() -> None:
        nonlocal errors, fell_back
        for body in it:
            t = time.perf_counter()
            try:
                r = await client.post(url, json=body)
                errors += r.status_code != 200
                fell_back += "x-benchroute-routing-fallback" in r.headers
            except httpx.HTTPError:
                errors += 1
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return stats(latencies, wall, errors, {"routed_share": 1 - fell_back / len(bodies)})


def chat(text: str, model: str = "benchroute") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


async def short_after(client: httpx.AsyncClient, text: str) -> dict[str, float]:
    t = time.perf_counter()
    try:
        r = await client.post("/v1/chat/completions", json=chat(text), timeout=120)
        status, fb = r.status_code, "x-benchroute-routing-fallback" in r.headers
    except httpx.HTTPError:
        status, fb = 0, False
    return {"ms": (time.perf_counter() - t) * 1000, "status": float(status), "fell_back": float(fb)}


async def measure(base: str, upstream: str, key: str, pass_model: str, scale: float) -> dict[str, Any]:
    res: dict[str, Any] = {}
    headers = {"authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    n = lambda k: max(8, int(k * scale))  # noqa: E731
    async with (
        httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=120) as c,
        httpx.AsyncClient(base_url=upstream, limits=limits, timeout=120) as u,
    ):
        await c.post("/v1/chat/completions", json=chat("warm up the whole path"))
        res["upstream direct"] = await closed_loop(u, "/v1/chat/completions", [chat("hi", "up")] * n(200), 1)
        res["pass-through, 1 in flight"] = await closed_loop(
            c, "/v1/chat/completions", [chat("hi", pass_model)] * n(200), 1
        )
        res["pass-through, 16 in flight"] = await closed_loop(
            c, "/v1/chat/completions", [chat("hi", pass_model)] * n(800), 16
        )
        same = queries(1, 10_000)[0]
        await c.post("/v1/chat/completions", json=chat(same))
        res["routed repeated query (cache hit)"] = await closed_loop(
            c, "/v1/chat/completions", [chat(same)] * n(200), 1
        )
        res["routed distinct, 1 in flight"] = await closed_loop(
            c, "/v1/chat/completions", [chat(q) for q in queries(n(40), 20_000)], 1
        )
        res["routed distinct, 16 in flight"] = await closed_loop(
            c, "/v1/chat/completions", [chat(q) for q in queries(n(160), 30_000)], 16
        )
        res["/v1/route distinct, 16 in flight"] = await closed_loop(
            c, "/v1/route", [{"input": q} for q in queries(n(160), 40_000)], 16
        )
        # head-of-line blocking: an abandoned bulk request, then a short routed chat
        with contextlib.suppress(httpx.TimeoutException):
            await c.post(
                "/v1/recommend",
                json={"inputs": [long_text(i, 2_300) for i in range(12)]},
                timeout=httpx.Timeout(120, read=1.0),
            )
        res["short chat after an abandoned /v1/recommend"] = await short_after(c, queries(1, 50_000)[0])
        await asyncio.sleep(2)
        for k in (6, 8):
            long_reqs = [
                asyncio.create_task(c.post("/v1/chat/completions", json=chat(long_text(100 * k + i, 17_000))))
                for i in range(k)
            ]
            await asyncio.sleep(0.3)
            res[f"short chat with {k} long chats in flight"] = await short_after(c, queries(1, 60_000 + k)[0])
            await asyncio.gather(*long_reqs, return_exceptions=True)
    return res


# ----------------------------------------------------------------------------------------- states


def run_state(name: str, src: Path, upstream_url: str, scale: float, tmp: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src), "OPENBLAS_NUM_THREADS": "1"}
    router_dir = tmp / f"router-{name}"
    print(f"[{name}] fitting the llmrouter router with {src} ...", flush=True)
    subprocess.run(
        [PYTHON, "-c", CLI, "fit", "llmrouter", "-o", str(router_dir)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    models = json.loads((router_dir / "router.json").read_text())["payload"]["models"]
    key = secrets.token_urlsafe(24)
    config = {
        "models": {m: {"base_url": f"{upstream_url}/v1", "model": "up"} for m in models},
        "auth": {"keys_env": "BENCH_SERVE_KEY"},
        "limits": {
            "max_concurrency": 256,
            "max_input_chars": 20_000,
            "max_body_bytes": 2_000_000,
            "max_inputs": 64,
            "request_timeout_s": 20,
        },
    }
    cfg = tmp / f"serve-{name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp / f"serve-{name}.log").open("wb")
    print(f"[{name}] serving on {base} ...", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [PYTHON, "-c", CLI, "serve", str(router_dir), "--config", str(cfg), "--port", str(port)],
        env={**env, "BENCH_SERVE_KEY": key},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        healthy = wait_http(f"{base}/healthz", deadline, proc) - t0
        # the old server has no /readyz (401 or 404): it loaded the model before /healthz answered
        has_readyz = httpx.get(f"{base}/readyz", timeout=5).status_code in (200, 503)
        ready = (wait_http(f"{base}/readyz", deadline, proc) - t0) if has_readyz else healthy
        res = asyncio.run(measure(base, upstream_url, key, models[0], scale))
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    res["startup"] = {"healthz_s": healthy, "ready_s": ready}
    return res


# ----------------------------------------------------------------------------------------- report


def rows(res: dict[str, Any]) -> list[tuple[str, float, str, bool]]:
    """(label, value, unit, lower is better)."""
    out: list[tuple[str, float, str, bool]] = [
        ("startup: /healthz answers", res["startup"]["healthz_s"], "s", True),
        ("startup: ready to route", res["startup"]["ready_s"], "s", True),
    ]
    for label in (
        "upstream direct",
        "pass-through, 1 in flight",
        "routed repeated query (cache hit)",
        "routed distinct, 1 in flight",
    ):
        out.append((f"{label}: p50", res[label]["p50"], "ms", True))
    out.append(("routed distinct, 1 in flight: p99", res["routed distinct, 1 in flight"]["p99"], "ms", True))
    overhead = res["routed distinct, 1 in flight"]["p50"] - res["pass-through, 1 in flight"]["p50"]
    out.append(("routing overhead at 1 in flight (p50 routed - pass-through)", overhead, "ms", True))
    out.append(
        ("pass-through, 16 in flight: req/s", res["pass-through, 16 in flight"]["rps"], "req/s", False)
    )
    d16 = res["routed distinct, 16 in flight"]
    out += [
        ("routed distinct, 16 in flight: req/s answered", d16["rps"], "req/s", False),
        (
            "routed distinct, 16 in flight: req/s routed by the router",
            d16["rps"] * d16["routed_share"],
            "req/s",
            False,
        ),
        ("routed distinct, 16 in flight: p50", d16["p50"], "ms", True),
        ("routed distinct, 16 in flight: p99", d16["p99"], "ms", True),
        ("routed distinct, 16 in flight: errors", d16["errors"], "", True),
    ]
    r16 = res["/v1/route distinct, 16 in flight"]
    out += [
        ("/v1/route distinct, 16 in flight: req/s", r16["rps"], "req/s", False),
        ("/v1/route distinct, 16 in flight: p99", r16["p99"], "ms", True),
    ]
    for label in (
        "short chat after an abandoned /v1/recommend",
        "short chat with 6 long chats in flight",
        "short chat with 8 long chats in flight",
    ):
        r = res[label]
        out.append((f"{label}: latency", r["ms"], "ms", True))
        out.append((f"{label}: HTTP status", r["status"], "", False))
        out.append((f"{label}: routing fell back", r["fell_back"], "", False))
    return out


def report(results: dict[str, dict[str, Any]]) -> None:
    names = list(results)
    table = {name: rows(res) for name, res in results.items()}
    width = max(len(r[0]) for r in table[names[0]])
    head = f"{'figure':{width}s}" + "".join(f" {n:>12s}" for n in names)
    if len(names) == 2:
        head += f" {'after/before':>13s}"
    print(head)
    print("-" * len(head))
    for i, (label, _, unit, _lower) in enumerate(table[names[0]]):
        values = [table[n][i][1] for n in names]
        line = f"{label:{width}s}" + "".join(f" {v:12.1f}" for v in values)
        if len(names) == 2 and unit and values[1]:
            line += f" {values[0] / values[1]:12.2f}x"
        print(f"{line}  {unit}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="a git ref to measure as 'before' (e.g. bd12bdf)")
    ap.add_argument("--scale", type=float, default=1.0, help="request counts x this (0.25 for a quick look)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp_s:
        tmp = Path(tmp_s)
        states = {"after": ROOT / "src"}
        if args.baseline:
            before = tmp / "before"
            before.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.baseline, "src"], check=True, capture_output=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
            states = {"before": before / "src", **states}
        up_port = free_port()
        upstream = subprocess.Popen(
            [
                *(PYTHON, "-m", "uvicorn", "--factory", "upstream_app:create_upstream_app"),
                *("--port", str(up_port), "--log-level", "warning", "--no-access-log"),
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT / "tests")},
        )
        upstream_url = f"http://127.0.0.1:{up_port}"
        try:
            wait_http(f"{upstream_url}/docs", time.monotonic() + 60, upstream)
            results = {
                name: run_state(name, src, upstream_url, args.scale, tmp) for name, src in states.items()
            }
        finally:
            upstream.terminate()
            upstream.wait(30)
    print(
        f"\nllmrouter router (14 tasks, 9 models), all-mpnet-base-v2; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}; fake upstream on loopback"
    )
    report(results)
    if len(results) == 2:
        print("(after/before: the before value divided by the after one; > 1 means after is lower)")


if __name__ == "__main__":
    main()
