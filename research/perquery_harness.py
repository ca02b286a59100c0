"""Driver for the per-query harness with fit options (grid, objective, row subsample): prints the tables.

PYTHONPATH=src python research/perquery_harness.py llmrouter --grid small --parts loto
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from benchroute.data import load_with_embeddings
from benchroute.experiments.perquery import perquery_study
from benchroute.method.perquery import GRID, SMALL_GRID


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--grid", default="default", choices=("default", "full", "small"))
    ap.add_argument("--objective", default=None)
    ap.add_argument("--rows", type=int, default=-1, help="inner rows per task (-1: fit's default, 0: all)")
    ap.add_argument("--gate", type=float, default=None, help="min_z of the selection gate")
    ap.add_argument("--parts", nargs="+", default=["loto", "indist", "instance"])
    ap.add_argument("--orders", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    kw: dict = {}
    if a.grid != "default":
        kw["grid"] = {"full": GRID, "small": SMALL_GRID}[a.grid]
    if a.objective:
        kw["objective"] = a.objective
    if a.rows >= 0:
        kw["max_rows_per_task"] = a.rows or None
    if a.gate is not None:
        kw["min_z"] = a.gate
    t0 = time.perf_counter()
    res = perquery_study(load_with_embeddings(a.dataset), fit_kw=kw, parts=a.parts, orders=a.orders)
    print(f"## {a.dataset} {vars(a)} {time.perf_counter() - t0:.0f}s {res['seconds']}")
    for part in ("loto", "indist", "instance"):
        if part in res:
            print(f"### {part}")
            for r in res[part]["rows"]:
                print(f"  {r['method']:45s} {r['acc']:.4f} {r['diff_vs_bma']:+.4f} ± {r['se'] or 0:.4f}")
    if "session" in res:
        for r in res["session"]["rows"]:
            cells = " ".join(
                f"{w}:{c['diff_vs_bma']:+.4f}" for w, c in r["at"].items() if c["diff_vs_bma"] is not None
            )
            print(f"  {r['method']:50s} {cells}")
    if "cost" in res and "routellm" in res["cost"]:
        c = res["cost"]
        print("  cost:", c["routellm"], c["aiq"], "min margin", c["min_margin_over_single_hull"])
    if "knobs" in res:
        from collections import Counter

        print("  knobs:", Counter(json.dumps(k["knobs"]) for k in res["knobs"]).most_common(3))
        print("  session:", Counter(json.dumps(k["session"]) for k in res["knobs"]).most_common(3))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
