"""Ablation of the default router over data sets, seeds and embedding models (docs/reproduction.md).

Every row is a nested leave-one-task-out run (alpha = 0 unless --alpha): the paper's method (S3 + trust
rule), its parts, the blend without and with the trust gate (the default "Router"), and the baselines.
Seeds change the confidence model's moved-sample draws and the trust rule's Monte Carlo draws; the
mean +- std over seeds shows how much of a difference is luck of the draw.

    python research/ablation.py --datasets openllm_v2 llmrouter alpacaeval2 --seeds 0 1 2 --out out/ablation
    python research/ablation.py --datasets openllm_v2 --models all-MiniLM-L6-v2 --seeds 0

Each run is written to OUT/<dataset>.<model>.a<alpha>.s<seed>.json as soon as it finishes (a killed run
resumes: finished runs are skipped); the table is printed as markdown at the end.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchroute.data import load_with_embeddings
from benchroute.experiments.evaluate import P_ESTIMATORS, ROWS, LOTOEvaluator, paired_difference, summarize
from benchroute.files import atomic_write_text
from benchroute.router.estimator import Router

METHODS = tuple(m for m in ROWS if m not in ("LL", "Few-shot", "Random"))


def run_one(dataset: str, model: str, seed: int, alpha: float, repeats: int, p_estimator: str) -> dict:
    bench = load_with_embeddings(dataset, model)  # bundled packs, then the cache, then the model
    ev = LOTOEvaluator(bench, Router(seed=seed, embedding_model=model, p_estimator=p_estimator))
    rows = ev.run(alphas=(alpha,), repeats=repeats)
    summary = summarize(rows)
    return {
        "dataset": dataset,
        "model": model,
        "seed": seed,
        "alpha": alpha,
        "p_estimator": p_estimator,
        "summary": {m: summary[m] for m in METHODS if m in summary},
        "paired": {m: paired_difference(rows, m, "BMA") for m in METHODS if m in summary and m != "BMA"},
    }


def _num(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def table(runs: list[dict]) -> str:
    """Markdown: one line per (dataset, model, alpha, method), mean +- std over seeds of acc and gain."""
    groups: dict[tuple[str, str, float, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["dataset"], r["model"], r["alpha"], r.get("p_estimator", "kernel")), []).append(
            r
        )
    lines = [
        (
            "| data | embeddings | alpha | Router's p | method | acc (mean ± std over seeds) | - BMA "
            "(paired SE) "
            "| Pearson | p MAE kernel / calibrated / accuracy | seeds |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (ds, model, alpha, pest), rs in sorted(groups.items()):
        for m in METHODS:
            if m not in rs[0]["summary"]:
                continue
            acc = np.array([r["summary"][m]["acc"] for r in rs])
            gain = np.array([r["paired"][m]["mean"] for r in rs]) if m != "BMA" else np.zeros(len(rs))
            se = np.mean([r["paired"][m]["se"] for r in rs]) if m != "BMA" else 0.0
            pear = np.mean([_num(r["summary"][m].get("pearson")) for r in rs])
            pear_s = f"{pear:.3f}" if np.isfinite(pear) else "—"
            mae = np.mean([_num(r["summary"][m].get("p_mae")) for r in rs])
            mae_cal = np.mean([_num(r["summary"][m].get("p_mae_cal")) for r in rs])
            mae_acc = np.mean([_num(r["summary"][m].get("p_mae_acc")) for r in rs])
            lines.append(
                f"| {ds} | {model} | {alpha:g} | {pest} | {m} | {acc.mean():.3f} ± {acc.std():.3f} | "
                f"{gain.mean():+.3f} ({se:.3f}) | {pear_s} | {mae:.3f} / {mae_cal:.3f} / {mae_acc:.3f} | "
                f"{len(rs)} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["openllm_v2", "llmrouter", "alpacaeval2"])
    ap.add_argument("--models", nargs="+", default=["all-mpnet-base-v2"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--alpha", type=float, default=0.0)
    ap.add_argument("--repeats", type=int, default=10, help="test repeats per task when alpha > 0")
    ap.add_argument(
        "--p-estimator",
        default="kernel",
        choices=list(P_ESTIMATORS),
        help="the p that the Router's trust gate uses",
    )
    ap.add_argument("--out", type=Path, default=Path("out/ablation"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for ds in args.datasets:
        for model in args.models:
            for seed in args.seeds:
                path = args.out / f"{ds}.{model}.a{args.alpha:g}.{args.p_estimator}.s{seed}.json"
                if not path.exists():
                    result = run_one(ds, model, seed, args.alpha, args.repeats, args.p_estimator)
                    atomic_write_text(path, json.dumps(result))
                    print(f"done {path.name}", flush=True)
                runs.append(json.loads(path.read_text()))
    print(table(runs))


if __name__ == "__main__":
    main()
