"""Nested leave-one-task-out (and optionally Ray Data embedding) on a local Ray vs one process.

Both runs happen in this process on the same data; the script asserts that Ray returns the very
same rows (and vectors) and prints each phase's time and the ratio one process / Ray.

    python benchmarks/bench_ray.py [--dataset openllm_v2] [--sweep-repeats 2] [--embed 256] [--num-cpus N]

Phases of a LOTO run: the neighbour pass (FoldEngine), the nested confidence pairs (one pass over
all tasks) -- both on the driver in either mode -- and the per-held-out-task scoring, which Ray
spreads over its workers. The last line is the LOTO ratio, e.g. ``loto one process / Ray 0.92x``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchroute.data import load_with_embeddings
from benchroute.embed import Embedder
from benchroute.experiments.distributed import RayLOTORunner, ray_embed, ray_session
from benchroute.experiments.evaluate import SWEEP_ALPHAS, LOTOEvaluator
from benchroute.files import jsonable
from benchroute.router.estimator import Router


def phases(
    bench: Any, runner: RayLOTORunner | None, sweep_repeats: int
) -> tuple[dict[str, float], list[Any]]:
    """Seconds per phase of one LOTO (and sweep) run, and its rows."""
    t = {}
    start = time.perf_counter()
    ev = LOTOEvaluator(bench, Router())
    t["engine"] = time.perf_counter() - start
    mark = time.perf_counter()
    ev.confidence(0)  # builds the nested pairs of every held-out task (cached on ev)
    t["nested"] = time.perf_counter() - mark
    mark = time.perf_counter()
    rows = ev.run(runner=runner)
    t["scoring"] = time.perf_counter() - mark
    if sweep_repeats:
        mark = time.perf_counter()
        rows = rows + ev.run(alphas=[a for a in SWEEP_ALPHAS if a > 0], repeats=sweep_repeats, runner=runner)
        t["sweep"] = time.perf_counter() - mark
    t["total"] = time.perf_counter() - start
    return t, json.loads(json.dumps(jsonable(rows), allow_nan=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="openllm_v2")
    ap.add_argument("--model", default="all-mpnet-base-v2")
    ap.add_argument(
        "--sweep-repeats", type=int, default=0, help="also the alpha sweep with this many repeats"
    )
    ap.add_argument(
        "--embed", type=int, default=0, help="also embed this many inputs (all-MiniLM-L6-v2) both ways"
    )
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    args = ap.parse_args()

    bench = load_with_embeddings(args.dataset, args.model)
    print(f"{bench.name}: {bench.n_tasks} tasks, {bench.n_items} items, {bench.n_models} models")
    one, rows_one = phases(bench, None, args.sweep_repeats)
    print("one process: " + ", ".join(f"{k} {v:.1f} s" for k, v in one.items()))
    start = time.perf_counter()
    with ray_session(num_cpus=args.num_cpus) as ray:
        init = time.perf_counter() - start
        print(f"Ray start: {init:.1f} s ({int(ray.cluster_resources()['CPU'])} CPUs)")
        on_ray, rows_ray = phases(bench, RayLOTORunner(), args.sweep_repeats)
        print("Ray:         " + ", ".join(f"{k} {v:.1f} s" for k, v in on_ray.items()))
        assert rows_ray == rows_one, "Ray rows differ from the single-process rows"
        print(f"rows identical: {len(rows_one)} of {len(rows_one)}")
        if args.embed:
            texts = list(dict.fromkeys(bench.inputs))[: args.embed]
            with tempfile.TemporaryDirectory() as tmp:
                mark = time.perf_counter()
                local = Embedder("all-MiniLM-L6-v2", cache=Path(tmp) / "one.sqlite").encode(texts)
                t_one = time.perf_counter() - mark
                dist = Embedder("all-MiniLM-L6-v2", cache=Path(tmp) / "ray.sqlite")
                mark = time.perf_counter()
                ray_embed(dist, texts)
                t_ray = time.perf_counter() - mark
                same = np.array_equal(dist.encode(texts), local)
            print(
                f"embed {len(texts)} inputs: one process {t_one:.1f} s, Ray Data {t_ray:.1f} s "
                f"(ratio {t_one / t_ray:.2f}x), vectors bit-identical: {same}"
            )
    for k in ("scoring", "sweep"):
        if k in one:
            print(f"{k}: one process / Ray {one[k] / on_ray[k]:.2f}x")
    print(
        f"loto one process / Ray {one['total'] / on_ray['total']:.2f}x "
        f"({one['total'] / (on_ray['total'] + init):.2f}x counting the Ray start)"
    )


if __name__ == "__main__":
    main()
