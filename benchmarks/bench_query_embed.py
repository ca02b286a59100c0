"""Query embedding for serving: per-query latency, micro-batch throughput and a simulated server.

Chat-length queries (100-400 characters, a seeded sample of the bundled llmrouter, openllm_v2 and
alpacaeval2 inputs) are embedded by every candidate path in ONE process, interleaved (query by query
for latency, pass by pass for throughput), so that load from other processes hits all alike. Every
figure is also printed as a ratio to today's serving path (``mpnet-torch-t2``: ``Embedder(mpnet,
cache=False).encode_uncached``, sentence-transformers fp32 on 2 torch threads).

1. latency at batch 1: p50 / p99 over every query x repeat;
2. throughput (texts/s) with micro-batches of 1, 4, 8, 16, 32 (consecutive chunks of the sample, so
   each batch pads to its own longest text, as a server's micro-batch does);
3. cosine of each candidate's vectors to torch fp32 of the same model (a MiniLM path can only serve
   a router fitted with MiniLM embeddings: routers are fitted per embedding model);
4. a simulated server: ``--clients`` closed-loop client threads each submit one distinct query and
   wait for its vector; one worker thread drains the queue into micro-batches of at most
   ``--max-batch`` texts (what benchroute.server's EmbeddingService does, minus HTTP); the
   routing overhead per request is the time from submit to vector. Reported: req/s, p50, p99.

Candidates (``--candidates``, comma-separated; default all): ``{mpnet,minilm}-torch-t{1,2}`` (fp32
sentence-transformers, torch.set_num_threads 1 or 2 around each call), ``mpnet-bf16`` (the existing
``fast="bf16"``; emulated, hence slow, on a CPU without AVX512-BF16/AMX), ``{mpnet,minilm}-onnx-t{1,2}``
(``fast="onnx"``: ONNX Runtime on an export of the local weights, cached under the benchroute home),
``-spin`` suffix: ONNX Runtime's busy-waiting intra-op threads (default here: off).

    python benchmarks/bench_query_embed.py                      # everything (~10-15 min on 2 cores)
    python benchmarks/bench_query_embed.py --quick              # fewer queries, one repeat
    python benchmarks/bench_query_embed.py --candidates mpnet-torch-t2,mpnet-onnx-t2 --no-serve
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from benchroute.data import load_benchmark
from benchroute.embed import DEFAULT_MODEL, SMALL_MODEL, Embedder, native_bf16, onnx_available

BASELINE = "mpnet-torch-t2"
ALL = (
    "mpnet-torch-t2",
    "mpnet-torch-t1",
    "mpnet-bf16",
    "mpnet-onnx-t2",
    "mpnet-onnx-t1",
    "mpnet-onnx-t2-padded",
    "mpnet-onnx-t2-spin",
    "minilm-torch-t2",
    "minilm-torch-t1",
    "minilm-onnx-t2",
    "minilm-onnx-t1",
    "minilm-onnx-t2-padded",
)
SERVE_DEFAULT = (
    "mpnet-torch-t2",
    "mpnet-onnx-t2",
    "mpnet-onnx-t1",
    "minilm-torch-t2",
    "minilm-onnx-t2",
    "minilm-onnx-t1",
)
"""Simulated: each with one worker thread; the ``-t1`` ONNX ones also with two (``--workers 1,2``)."""
BATCHES = (1, 4, 8, 16, 32)


def chat_queries(n: int, lo: int = 100, hi: int = 400, seed: int = 0) -> list[str]:
    """``n`` distinct inputs of ``lo``-``hi`` characters, drawn evenly from the three bundled datasets."""
    rng = np.random.default_rng(seed)
    pools = []
    for name in ("llmrouter", "openllm_v2", "alpacaeval2"):
        texts = [t for t in dict.fromkeys(load_benchmark(name).inputs) if lo <= len(t) <= hi]
        pools.append([texts[i] for i in rng.permutation(len(texts))])
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n and any(pools):
        for pool in pools:
            if pool and (t := pool.pop()) not in seen:
                out.append(t)
                seen.add(t)
    return out[:n]


Encode = Callable[[list[str]], np.ndarray]


@dataclass
class Candidate:
    name: str
    model: str
    encode: Encode


def with_torch_threads(fn: Encode, n: int) -> Encode:
    import torch

    def run(texts: list[str]) -> np.ndarray:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn(texts)
        finally:
            torch.set_num_threads(before)

    return run


def build(name: str) -> Candidate:
    model = DEFAULT_MODEL if name.startswith("mpnet") else SMALL_MODEL
    parts = name.split("-")
    path, threads = parts[1], int(parts[2][1:]) if len(parts) > 2 and parts[2].startswith("t") else 2
    if path == "torch":
        emb = Embedder(model, cache=False)
        return Candidate(name, model, with_torch_threads(emb.encode_uncached, threads))
    if path == "bf16":
        emb = Embedder(model, cache=False, fast="bf16")
        return Candidate(name, model, with_torch_threads(emb.encode_uncached, threads))
    if path == "onnx":
        emb = Embedder(model, cache=False, fast="onnx", threads=threads, spin="spin" in parts)
        if "padded" in parts:  # the alternative: one padded forward pass per micro-batch

            def padded(texts: list[str]) -> np.ndarray:
                return emb.onnx.run(emb.tokenizer.ids(texts), emb._pad_id)

            return Candidate(name, model, padded)
        return Candidate(name, model, emb.encode_uncached)
    raise SystemExit(f"unknown candidate {name!r}")


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def latency(
    cands: list[Candidate], texts: list[str], repeats: int, cpu: dict[str, list[float]] | None = None
) -> dict[str, list[float]]:
    """Wall seconds per single-query call; ``cpu`` gets this process's CPU seconds per call (all its
    threads: for a 1-thread candidate close to the call's wall time on an otherwise idle core)."""
    times: dict[str, list[float]] = {c.name: [] for c in cands}
    for rep in range(repeats):
        for i, t in enumerate(texts):
            k = (i + rep) % len(cands)  # rotate who goes first
            for c in cands[k:] + cands[:k]:
                s, s_cpu = time.perf_counter(), time.process_time()
                c.encode([t])
                times[c.name].append(time.perf_counter() - s)
                if cpu is not None:
                    cpu.setdefault(c.name, []).append(time.process_time() - s_cpu)
    return times


def throughput(cands: list[Candidate], texts: list[str], batch: int, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {c.name: [] for c in cands}
    for rep in range(repeats):
        order = cands[rep % len(cands) :] + cands[: rep % len(cands)]
        for c in order:
            s = time.perf_counter()
            for i in range(0, len(texts), batch):
                c.encode(texts[i : i + batch])
            times[c.name].append(time.perf_counter() - s)
    return {k: len(texts) / statistics.median(v) for k, v in times.items()}


def serve(
    c: Candidate, texts: list[str], clients: int, max_batch: int, seconds: float, workers: int = 1
) -> tuple[float, list[float]]:
    """Closed loop: ``clients`` threads, ``workers`` threads draining micro-batches; (req/s, latencies)."""
    q: queue.Queue[tuple[str, threading.Event, list[float]]] = queue.Queue()
    stop = threading.Event()
    lat: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set() or not q.empty():
            try:
                first = q.get(timeout=0.05)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < max_batch:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            c.encode([b[0] for b in batch])
            for _, ev, _ in batch:
                ev.set()

    def client(k: int) -> None:
        i = k
        while not stop.is_set():
            ev = threading.Event()
            s = time.perf_counter()
            q.put((texts[i % len(texts)], ev, []))
            ev.wait()
            with lock:
                lat.append(time.perf_counter() - s)
            i += clients

    ws = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for w in ws:
        w.start()
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    for w in ws:
        w.join()
    return len(lat) / elapsed, lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="distinct chat-length queries (100-400 chars)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--candidates", default=",".join(ALL))
    ap.add_argument("--serve-candidates", default=",".join(SERVE_DEFAULT))
    ap.add_argument("--clients", default="1,16", help="simulated concurrent requests, comma-separated")
    ap.add_argument(
        "--max-batch", default="16", help="micro-batch limits for the simulation, comma-separated"
    )
    ap.add_argument(
        "--workers", default="1,2", help="worker threads for the -t1 ONNX candidates, comma-separated"
    )
    ap.add_argument("--seconds", type=float, default=8.0, help="per simulated run")
    ap.add_argument("--no-serve", action="store_true")
    ap.add_argument("--latency-only", action="store_true", help="batch-1 latency, CPU time and cosine only")
    ap.add_argument("--quick", action="store_true", help="--n 16 --repeats 1 --seconds 4")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeats, args.seconds = 16, 1, 4.0
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    names = [c for c in args.candidates.split(",") if c]
    if BASELINE not in names:
        names.insert(0, BASELINE)
    if not onnx_available():
        print("ONNX Runtime not installed (pip install 'benchroute[onnx]'): skipping the onnx candidates")
        names = [n for n in names if "onnx" not in n]
    texts = chat_queries(args.n)
    lens = [len(t) for t in texts]
    cands = [build(n) for n in names]
    t0 = time.perf_counter()
    for c in cands:  # load, export (first time), warm up: outside every timing
        c.encode(texts[:4])
        c.encode(texts[:1])
    print(f"loaded + warmed up in {time.perf_counter() - t0:.1f} s")
    load0 = os.getloadavg()[0]

    # 3. cosine, each candidate against torch fp32 of its own model (full-sample vectors, batch 32)
    vecs = {
        c.name: np.concatenate([c.encode(texts[i : i + 32]) for i in range(0, len(texts), 32)]) for c in cands
    }
    fp32 = {}
    for m, prefix in ((DEFAULT_MODEL, "mpnet"), (SMALL_MODEL, "minilm")):
        if any(c.model == m for c in cands):
            fp32[m] = vecs.get(f"{prefix}-torch-t2")
            if fp32[m] is None:
                fp32[m] = Embedder(m, cache=False).encode_uncached(texts)
    cos = {c.name: (vecs[c.name] * fp32[c.model]).sum(axis=1) for c in cands}
    single_cos = {}
    for c in cands:  # batch-1 vectors too (no padding): what a lone request gets
        one = np.concatenate([c.encode([t]) for t in texts[:8]])
        single_cos[c.name] = float((one * fp32[c.model][:8]).sum(axis=1).min())

    # 1. latency at batch 1
    cpu: dict[str, list[float]] = {}
    lat = latency(cands, texts, args.repeats, cpu)
    # 2. throughput per batch size
    tput = {1: {k: len(v) / sum(v) for k, v in lat.items()}}
    for b in BATCHES[1:] if not args.latency_only else []:
        tput[b] = throughput(cands, texts, b, args.repeats)
        print(f"  throughput at batch {b} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    load1 = os.getloadavg()[0]

    print(
        f"\n{len(texts)} distinct chat-length queries ({min(lens)}-{max(lens)} chars, median "
        f"{int(np.median(lens))}), "
        f"{args.repeats} interleaved repeats; 1-min load {load0:.1f} -> {load1:.1f} on {os.cpu_count()} "
        "cores; "
        f"native bf16: {native_bf16()}"
    )
    base_p50 = pct(lat[BASELINE], 50)
    batches = [b for b in BATCHES if b in tput]
    base_cpu = pct(cpu[BASELINE], 50)
    head = f"{'candidate':21s} {'p50 ms':>7s} {'p99 ms':>7s} {'p50 x':>6s} {'cpu ms':>7s} {'cpu x':>6s} "
    print(
        head
        + " ".join(f"{'b' + str(b) + ' /s':>8s}" for b in batches)
        + f" {'1-cos mean':>10s} {'1-cos max':>9s} "
        f"{'b1 1-cos max':>12s}"
    )
    for c in cands:
        p50, p99, c50 = pct(lat[c.name], 50) * 1e3, pct(lat[c.name], 99) * 1e3, pct(cpu[c.name], 50) * 1e3
        row = f"{c.name:21s} {p50:7.1f} {p99:7.1f} {base_p50 * 1e3 / p50:5.2f}x "
        row += f"{c50:7.1f} {base_cpu * 1e3 / c50:5.2f}x "
        row += " ".join(f"{tput[b][c.name]:8.1f}" for b in batches)
        print(
            row
            + f" {1 - cos[c.name].mean():10.1e} {1 - cos[c.name].min():9.1e} {1 - single_cos[c.name]:12.1e}"
        )
    print(f"throughput ratio vs {BASELINE}:")
    for c in cands:
        print(
            f"{c.name:21s} " + " ".join(f"b{b} {tput[b][c.name] / tput[b][BASELINE]:6.2f}x" for b in batches)
        )

    if args.no_serve or args.latency_only:
        return
    # 4. simulated server, interleaved rounds
    serve_names = [n for n in args.serve_candidates.split(",") if n in {c.name for c in cands}]
    clients = [int(x) for x in args.clients.split(",")]
    limits = [int(x) for x in args.max_batch.split(",")]
    workers = [int(x) for x in args.workers.split(",")]
    configs = []  # (name, clients, max batch, workers)
    for n_clients in clients:
        for limit in limits if n_clients > 1 else limits[:1]:
            for name in serve_names:
                for w in workers if ("onnx" in name and name.endswith("-t1")) else [1]:
                    configs.append((name, n_clients, limit, w))
    results: dict[tuple[str, int, int, int], list[tuple[float, list[float]]]] = {}
    by_name = {c.name: c for c in cands}
    for rep in range(args.repeats):
        k = rep % len(configs)
        for cfg in configs[k:] + configs[:k]:
            name, n_clients, limit, w = cfg
            results.setdefault(cfg, []).append(serve(by_name[name], texts, n_clients, limit, args.seconds, w))
        print(f"  serve round {rep + 1} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(
        f"\nsimulated server ({args.seconds:.0f} s per run, {args.repeats} interleaved rounds; "
        f"1-min load {os.getloadavg()[0]:.1f}): routing overhead = submit -> vector"
    )
    print(
        f"{'candidate':20s} {'clients':>7s} {'max batch':>9s} {'workers':>7s} {'req/s':>7s} {'ratio':>6s} "
        f"{'p50 ms':>7s} {'p99 ms':>7s}"
    )
    for cfg in configs:
        name, n_clients, limit, w = cfg
        runs = results[cfg]
        rate = statistics.median(r for r, _ in runs)
        lats = [x for _, ls in runs for x in ls]
        base = results.get((BASELINE, n_clients, limit, 1))
        ratio = rate / statistics.median(r for r, _ in base) if base else float("nan")
        print(
            f"{name:20s} {n_clients:7d} {limit:9d} {w:7d} {rate:7.1f} {ratio:5.2f}x "
            f"{pct(lats, 50) * 1e3:7.1f} "
            f"{pct(lats, 99) * 1e3:7.1f}"
        )


if __name__ == "__main__":
    main()
