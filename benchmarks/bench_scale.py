"""The memory and time model of docs/scaling.md, checked against measurements at 10k / 100k / 1M questions.

For each store size N (synthetic 768-d questions from ``bench_route.ClusteredEmbeddings``, written
once to ``--workdir`` as a float32 .npy and memory-mapped from there) it prints the model's
prediction next to the measurement:

* memory: embeddings, labels of M models as float32 / uint8 / bits (``LabelMatrix``), the FAISS flat
  and IVF indexes (resident anonymous memory added by building them over the mapped store);
* time: single-query route latency (exact FAISS flat, IVF with the store-size defaults), IVF build
  time, and the leave-one-task-out neighbour pass (quadratic in N: run whole at the smallest size,
  on a random sample of rows at the larger ones and scaled by N / rows).

The time model is first principles: bytes read / memory bandwidth for a query (one thread, as when
serving), flops / matrix-product rate for index builds and the neighbour pass (two threads), plus a
per-element cost of the partial sort; the three rates are measured by micro-benchmarks at start, not
fitted to the results, so "ratio" (measured / model) is how close each step runs to what the
hardware allows. Last, a subprocess whose data segment
is capped below the store size (``RLIMIT_DATA``) searches the largest store exactly through the
memory map and must return the same neighbours as the in-memory FAISS flat search.

    python benchmarks/bench_scale.py [--sizes 10000 100000 1000000] [--workdir /tmp/benchroute-scale]

~12 min on 2 cores with the defaults (8 once the 1M store file exists), most of it writing the 1M store,
building its IVF index and timing the sampled neighbour pass.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_route import ClusteredEmbeddings

from benchroute.method.labels import LabelMatrix
from benchroute.method.neighbors import NeighborIndex, cross_task_neighbors, default_nlist, default_nprobe

TASK_SIZE = 250
KAPPA = 19


def rss_anon() -> int:
    """Resident anonymous memory of this process (bytes): heap and arrays, not mapped file pages."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back first, so deltas are what is held
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def mib(b: float) -> str:
    return f"{b / 2**20:,.1f} MiB" if b < 2**30 else f"{b / 2**30:,.2f} GiB"


def store_file(n: int, dim: int, workdir: Path) -> Path:
    """The N x dim float32 store on disk (written task by task: never whole in memory)."""
    path = workdir / f"store_{n}_{dim}.npy"
    if path.exists():
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    gen = ClusteredEmbeddings(dim, seed=0, task_size=TASK_SIZE)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
    for t in range(math.ceil(n / TASK_SIZE)):
        rows = slice(t * TASK_SIZE, min(n, (t + 1) * TASK_SIZE))
        out[rows] = gen.task(t, rows.stop - rows.start)
    out.flush()
    del out
    tmp.rename(path)
    return path


def queries(dim: int, n: int = 300) -> np.ndarray:
    """Questions of tasks that are not in any store (the harder routing case)."""
    gen = ClusteredEmbeddings(dim, seed=0, task_size=TASK_SIZE)
    return np.vstack([gen.task(10**7 + j, 50) for j in range(math.ceil(n / 50))])[:n]


def p50_ms(index: NeighborIndex, q: np.ndarray, k: int = 5) -> float:
    times = []
    for row in q:
        t = time.perf_counter()
        index.search(row[None, :], k)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def machine_rates() -> dict[str, float]:
    """Read bandwidth (1 thread), float32 matmul rate (2 threads), mask + partial-sort cost per element."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    big = rng.random((350_000, 768), dtype=np.float32)  # ~1 GiB: far beyond the caches
    v = rng.random(768, dtype=np.float32)
    with threadpool_limits(1):
        big @ v
        t = time.perf_counter()
        for _ in range(3):
            big @ v
        bandwidth = 3 * big.nbytes / (time.perf_counter() - t)
    a, b = big[:2048], big[2048:67_584]
    a @ b[:4096].T
    t = time.perf_counter()
    a @ b.T
    flops = 2 * a.shape[0] * b.shape[0] * a.shape[1] / (time.perf_counter() - t)
    sims = big[:64, :512] @ big[:, :512].T  # 64 x 350k similarities, then what the pass does per element:
    task = np.arange(len(big)) // TASK_SIZE
    t = time.perf_counter()
    sims[task[:64, None] == task[None, :]] = -np.inf  # mask the own task
    np.argpartition(-sims, KAPPA + TASK_SIZE - 1, axis=1)  # keep the top depth
    select = (time.perf_counter() - t) / sims.size
    print(
        f"machine: read {bandwidth / 1e9:.1f} GB/s (1 thread), matrix products {flops / 1e9:.0f} GFLOP/s "
        f"(2 threads), mask + partial sort {select * 1e9:.1f} ns/element"
    )
    return {"bandwidth": bandwidth, "flops": flops, "select": select}


class Table:
    """Rows of (N, quantity, model, measured, measured / model)."""

    def __init__(self, rates: dict[str, float]) -> None:
        self.rates = rates
        print(f"{'N':>10}  {'quantity':<44} {'model':>14} {'measured':>14} {'ratio':>6}")

    def memory(self, n: int, what: str, model: float, measured: float) -> None:
        print(
            f"{n:>10,}  {what:<44} {mib(model):>14} {mib(measured):>14} {measured / model:>6.2f}", flush=True
        )

    def time(self, n: int, what: str, model: float, measured: float, unit: str = "s", note: str = "") -> None:
        print(
            f"{n:>10,}  {what:<44} {model:>12.3f} {unit:<1} {measured:>12.3f} {unit:<1} "
            f"{measured / model:>6.2f}"
            f"{'  ' + note if note else ''}",
            flush=True,
        )


def run_size(n: int, args: argparse.Namespace, table: Table, q: np.ndarray) -> Path:
    import faiss

    dim = args.dim
    t = time.perf_counter()
    path = store_file(n, dim, Path(args.workdir))
    made = time.perf_counter() - t
    store = np.load(path, mmap_mode="r")
    table.memory(
        n, f"embeddings float32 N*d*4 (file; made in {made:.0f} s)", n * dim * 4, path.stat().st_size
    )

    # labels of M models: float32 / uint8 / bit-packed, resident bytes added by holding them
    rng = np.random.default_rng(0)
    for m in args.models:
        Y = rng.random((n, m), dtype=np.float32) < 0.6
        for enc, per in (("float32", m * 4), ("uint8", m), ("bits", math.ceil(m / 8))):
            before = rss_anon()
            labels = LabelMatrix(Y, enc)  # type: ignore[arg-type]
            table.memory(n, f"labels M={m} {enc} N*{per}", n * per, max(rss_anon() - before, labels.nbytes))
            del labels
        del Y

    # indexes over the mapped store: resident memory they add, build time, single-query latency
    faiss.omp_set_num_threads(2)
    before = rss_anon()
    flat = NeighborIndex("faiss-flat").fit(np.asarray(store))  # FAISS copies the vectors into RAM
    table.memory(n, "index FAISS flat N*d*4", n * dim * 4, rss_anon() - before)
    faiss.omp_set_num_threads(1)
    n_exact = len(q) if n <= 100_000 else 30
    r = table.rates
    table.time(
        n,
        "route p50, exact (FAISS flat): N*d*4 B / read",
        n * dim * 4 / r["bandwidth"] * 1e3,
        p50_ms(flat, q[:n_exact]),
        "ms",
    )
    _, exact_idx = flat.search(q, 5)
    np.save(Path(args.workdir) / f"exact_{n}.npy", exact_idx)
    del flat

    faiss.omp_set_num_threads(2)
    nlist = default_nlist(n)
    nprobe = default_nprobe(nlist)
    before = rss_anon()
    t = time.perf_counter()
    ivf = NeighborIndex("faiss-ivf").fit(store)  # trains on a sample, adds the mapped store in blocks
    build = time.perf_counter() - t
    table.memory(
        n,
        f"index IVF-SQfp16 N*(2d+8)+nlist*d*4 (nlist {nlist})",
        n * (2 * dim + 8) + nlist * dim * 4,
        rss_anon() - before,
    )
    train = min(n, 50 * nlist)
    table.time(
        n, "IVF build: 2*(10*train + N)*nlist*d flop", 2 * (10 * train + n) * nlist * dim / r["flops"], build
    )
    faiss.omp_set_num_threads(1)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ivf.search(q, 5)[1], exact_idx, strict=True)])
    read = nlist * dim * 4 + nprobe * n / nlist * dim * 2  # centroids (float32) + probed codes (fp16)
    table.time(
        n,
        "route p50, IVF: (nlist*4d + nprobe*N/nlist*2d) B",
        read / r["bandwidth"] * 1e3,
        p50_ms(ivf, q),
        "ms",
        f"nprobe {nprobe}, recall@5 {recall:.3f}",
    )
    del ivf

    # the leave-one-task-out neighbour pass: every item against every item of the other tasks
    faiss.omp_set_num_threads(2)
    task = np.arange(n) // TASK_SIZE
    rows = np.arange(n) if n <= args.loto_full else np.sort(rng.choice(n, args.loto_rows, replace=False))
    emb = np.asarray(store)
    depth = KAPPA + TASK_SIZE  # the fold engine's lists: neighbours needed + the largest task
    t = time.perf_counter()
    sims, idx = cross_task_neighbors(emb, task, depth, rows=rows)
    took = (time.perf_counter() - t) * n / len(rows)
    note = "whole" if len(rows) == n else f"{len(rows):,} rows sampled, x N/rows"
    pass_model = float(n) * n * (2 * dim / r["flops"] + r["select"])
    table.time(n, "LOTO neighbour pass: N^2*(2d flop + sort)", pass_model, took, "s", note)
    held = (sims.nbytes + idx.nbytes + idx.size * np.dtype(np.int32).itemsize) * n / len(rows)  # + task ids
    table.memory(n, f"LOTO neighbour lists N*depth*16 (depth {depth})", n * depth * 16, held)
    del emb
    return path


CAPPED = """
import json, resource, sys, time
import numpy as np
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
from benchroute.method.neighbors import NeighborIndex
store = np.load(sys.argv[2], mmap_mode="r")
q = np.load(sys.argv[3])
t = time.perf_counter()
sims, idx = NeighborIndex(block_rows=32768).fit(store).search(q, 5)
took = time.perf_counter() - t
anon = [int(x.split()[1]) * 1024 for x in open("/proc/self/status") if x.startswith("RssAnon:")][0]
print(json.dumps({"seconds": took, "rss_anon": anon, "idx": idx.tolist()}))
"""


def capped_search(path: Path, q: np.ndarray, args: argparse.Namespace) -> None:
    """Exact search of the mapped store in a process whose data segment is capped below the store size."""
    limit = int(args.data_limit * 2**30)
    qpath = Path(args.workdir) / "queries.npy"
    np.save(qpath, q[:32])
    size = path.stat().st_size
    out = subprocess.run(
        [sys.executable, "-c", CAPPED, str(limit), str(path), str(qpath)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        print(f"capped search FAILED (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
        return
    res = json.loads(out.stdout)
    n = int(path.stem.split("_")[1])
    exact = np.load(Path(args.workdir) / f"exact_{n}.npy")[:32]
    same = np.array_equal(np.array(res["idx"]), exact)
    print(
        f"\nexact search of the mapped {mib(size)} store ({n:,} x {args.dim} float32) in a process limited "
        "to "
        f"RLIMIT_DATA {mib(limit)}: 32 queries in {res['seconds']:.1f} s, resident anonymous memory "
        f"{mib(res['rss_anon'])}, neighbours identical to the in-memory FAISS flat search: {same}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--models", type=int, nargs="+", default=[78, 500])
    ap.add_argument(
        "--loto-full", type=int, default=20_000, help="run the LOTO neighbour pass whole up to this N"
    )
    ap.add_argument("--loto-rows", type=int, default=2_000, help="rows sampled above --loto-full")
    ap.add_argument("--data-limit", type=float, default=1.0, help="GiB of RLIMIT_DATA for the capped search")
    ap.add_argument("--workdir", default="/tmp/benchroute-scale")
    args = ap.parse_args()
    t0 = time.perf_counter()
    q = queries(args.dim)
    table = Table(machine_rates())
    path = None
    for n in sorted(args.sizes):
        path = run_size(n, args, table, q)
    if path is not None:
        capped_search(path, q, args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        f"\npeak RSS of this process {mib(peak)} (includes mapped store pages); total "
        f"{time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
