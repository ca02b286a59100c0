"""Per-query and session routing study (the colleague's first study; the product harness is
benchroute.experiments.perquery, driven by research/perquery_harness.py).

    PYTHONPATH=src python research/perquery.py --dataset openllm_v2 --seeds 0 1 2

Protocols (all knobs chosen on the training side only):

* LOTO per-query: each task in turn is held out; the store is the other tasks; every query of the
  held-out task is routed alone. Knobs are selected inside the fold (inner leave-one-task-out and
  leave-one-item-out over the training tasks; the held-out task's items are never neighbours).
* In-distribution split: per task a stratified test share (default 20%) is held out, the rest is the
  store; knobs are selected on the store only; several seeds.
* Session replay (LOTO): each held-out task's queries as a stream in random order; accuracy of the
  routed model at query positions w (the query that follows w earlier ones), averaged over orders.

Everything comes from one neighbour pass over all items (the FoldEngine idea): per item its nearest
other-task items and its nearest other items, deep enough that removing a held-out task (or the
test share) still leaves the k needed; each fold is a filter of these lists.
Differences to BMA are paired over tasks (mean +- standard error over tasks).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from benchroute.method.neighbors import normalize, topk_from_similarity
from benchroute.method.perquery import (
    DEFAULT_KNOBS,
    SessionKnobs,
    fit_stats,
    hks_parts,
    hks_scores,
    pick,
    query_scores,
    select_knobs,
    select_session_knobs,
    session_replay_picks,
    take_first,
)
from benchroute.method.scores import BLEND_KS, BLEND_LAMBDAS, select_blend

SHRINK_LAMBDAS = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
POSITIONS = (0, 1, 5, 10, 25, 50)
OBJECTIVES = ("safe", "both", "loto", "loo", "min")


def neighbour_pass(emb: np.ndarray, task: np.ndarray, depth: int) -> dict[str, np.ndarray]:
    """Per item: nearest other-task items (cross) and nearest other items (self), ``depth`` each."""
    n = len(emb)
    depth = min(depth, n - 1)
    out = {
        key: np.zeros((n, depth), dt)
        for key, dt in (("CS", np.float32), ("CI", np.int64), ("SS", np.float32), ("SI", np.int64))
    }
    for a in range(0, n, 1000):
        r = np.arange(a, min(n, a + 1000))
        sim = emb[r] @ emb.T
        sim[r - a, r] = -np.inf
        out["SS"][r], out["SI"][r] = topk_from_similarity(sim, depth)
        sim[task[r][:, None] == task[None, :]] = -np.inf
        out["CS"][r], out["CI"][r] = topk_from_similarity(sim, depth)
    return out


def knn_mean(idx: np.ndarray, Y: np.ndarray, ks: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Plain kNN means of Y over the first k neighbours, for each k (n x M each)."""
    out = {k: np.zeros((len(idx), Y.shape[1])) for k in ks}
    kmax = max(ks)
    for a in range(0, len(idx), 200):
        c = np.cumsum(Y[idx[a : a + 200, :kmax]], axis=1)
        for k in ks:
            out[k][a : a + 200] = c[:, k - 1] / k
    return out


def today_pick(g5: np.ndarray, bma: int) -> np.ndarray:
    """Router.route today: argmax g (k = 5); ties to the BMA if tied, else the first tied model."""
    top = g5.max(axis=1, keepdims=True)
    first = g5.argmax(axis=1)
    return np.where(g5[:, bma] >= top[:, 0], bma, first)


def nearest_task_vote(
    sims: np.ndarray,
    idx: np.ndarray,
    task: np.ndarray,
    n_tasks: int,
    A: np.ndarray,
    prior: np.ndarray,
    k: int = 20,
) -> np.ndarray:
    """The best model of the task most of the k neighbours come from (ties: larger similarity sum)."""
    n = len(idx)
    t = task[idx[:, :k]]
    cnt = np.zeros((n, n_tasks))
    np.add.at(cnt, (np.repeat(np.arange(n), k), t.ravel()), 1.0)
    ssum = np.zeros((n, n_tasks))
    np.add.at(ssum, (np.repeat(np.arange(n), k), t.ravel()), sims[:, :k].ravel())
    vote = (cnt + 1e-3 * ssum / k).argmax(axis=1)
    return pick(A[vote], prior)


class Study:
    def __init__(
        self,
        name: str,
        target: str,
        seeds: list[int],
        test_fraction: float,
        orders: int,
        objectives: tuple[str, ...],
        quick: bool,
        ablate: bool = True,
    ) -> None:
        from benchroute.data import load_with_embeddings

        b = load_with_embeddings(name)
        use_scores = target == "scores" or (target == "auto" and name == "alpacaeval2")
        self.name, self.target = name, "scores" if use_scores else "correct"
        self.Y = np.asarray(b.scores if use_scores else b.correct, dtype=np.float32)
        self.task = np.asarray(b.task_index, dtype=np.int64)
        self.T, self.tasks, self.models = b.n_tasks, list(b.tasks), list(b.models)
        self.n, self.M = self.Y.shape
        self.seeds, self.test_fraction, self.orders, self.objectives = (
            seeds,
            test_fraction,
            orders,
            objectives,
        )
        self.kmax = 200
        sizes = np.bincount(self.task)
        t0 = time.perf_counter()
        self.nn = neighbour_pass(normalize(b.embeddings), self.task, self.kmax + int(sizes.max()) + 150)
        self.nn["CT"] = self.task[self.nn["CI"]]
        self.nn["ST"] = self.task[self.nn["SI"]]
        self.t_pass = time.perf_counter() - t0
        self.emb = normalize(b.embeddings)
        self.quick, self.ablate = quick, ablate

    # ---------------------------------------------------------------------------------- helpers
    def lists(self, rows: np.ndarray, kind: str, keep_store: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s, i = self.nn[kind + "S"][rows], self.nn[kind + "I"][rows]
        return take_first(s, i, keep_store[i], self.kmax)

    @staticmethod
    def local(idx: np.ndarray, store: np.ndarray, n: int) -> np.ndarray:
        loc = np.full(n, -1, np.int64)
        loc[store] = np.arange(len(store))
        out = loc[idx]
        assert (out >= 0).all()
        return out

    def shrink_lambda(
        self, store_Y: np.ndarray, store_task: np.ndarray, g100: np.ndarray, P_wo: np.ndarray
    ) -> float:
        """lambda of the k=100 kNN shrunk toward BMA, by inner LOTO (task-averaged, ties to larger)."""
        rt = store_task
        best = None
        present = np.unique(rt)
        for lam in sorted(SHRINK_LAMBDAS, reverse=True):
            q = (1 - lam) * g100 + lam * P_wo[rt]
            pk = np.array([0])
            pk = (q + 1e-9 * P_wo[rt]).argmax(axis=1)
            y = store_Y[np.arange(len(rt)), pk]
            acc = np.mean([y[rt == t].mean() for t in present])
            if best is None or acc > best[0] + 1e-12:
                best = (acc, lam)
        return best[1]

    def fold_fit(self, store: np.ndarray, excluded_task: int | None, split_keep: np.ndarray | None):
        """Inner selection on a store (global rows); returns everything the outer fold needs."""
        n, T = self.n, self.T
        keep = np.zeros(n, bool)
        keep[store] = True
        Ys, ts = self.Y[store], self.task[store]
        cs, ci = self.lists(store, "C", keep)
        ss, si = self.lists(store, "S", keep)
        ci, si = self.local(ci, store, n), self.local(si, store, n)
        stats = fit_stats(Ys, ts, n_tasks=T, loo=(ss, si))
        sel = {}
        from benchroute.method.perquery import KnobSelection, _objective

        for cal in (True, False) if self.ablate else (True,):
            first = select_knobs(Ys, ts, (cs, ci), (ss, si), objective=self.objectives[0], calibrate=cal)
            for obj in self.objectives:  # same table, other objective: re-rank without recomputing
                tab = first.table
                best = max(range(len(tab)), key=lambda j: (_objective(tab[j][1], tab[j][2], obj), -j))
                kn, gl, gi = tab[best]
                sel[(obj, cal)] = KnobSelection(kn, gl, gi, obj)
        # k=100 shrunk baseline: lambda by inner LOTO
        A = stats.task_acc
        present = np.bincount(ts, minlength=T) > 0
        P_wo = (A[present].sum(0)[None] - A) / (present.sum() - 1)
        g100 = knn_mean(ci, Ys, (100,))[100]
        lam100 = self.shrink_lambda(Ys, ts, g100, P_wo)
        # task-level blend (k, lambda) by inner LOTO, and session knobs, with the "both" knobs
        kn = sel[(self.objectives[0], True)].knobs
        se, ey, W = hks_parts(cs, ci, Ys, ts, T, kn.k, kn.tau, stats.tightness if kn.calibrate else None)
        q, g = hks_scores(
            se,
            ey,
            W @ A,
            P_wo[ts],
            kn.k,
            kn.tau,
            kn.s_task,
            kn.s_item,
            kn.lam,
            se_member=W.sum(1),
            return_g=True,
        )
        tasks_in = np.flatnonzero(present)
        curves_g = knn_mean(ci, Ys, BLEND_KS)
        curves = {int(t): np.stack([curves_g[k][ts == t].mean(0) for k in BLEND_KS]) for t in tasks_in}
        priors = {int(t): P_wo[t] for t in tasks_in}
        blend = select_blend(curves, priors, A, BLEND_KS, BLEND_LAMBDAS)
        # the colleague's session rule: evidence = HKS's item estimate g (kept here for comparison; the
        # product's session evidence is the kNN mean, measured by benchroute.experiments.perquery)
        sess = select_session_knobs(
            {int(t): q[ts == t] for t in tasks_in},
            {SessionKnobs().k: {int(t): g[ts == t] for t in tasks_in}},
            {int(t): Ys[ts == t] for t in tasks_in},
            priors,
            grid={"k": (SessionKnobs().k,), "n0": (1.0, 3.0, 10.0, 30.0), "lam_s": (0.75, 0.5, 0.25, 0.0)},
        )
        return {"stats": stats, "sel": sel, "lam100": lam100, "blend": blend, "sess": sess, "keep": keep}

    def route_all(
        self, fit: dict, queries: np.ndarray, qs: np.ndarray, qi: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Picks of every rule for the query rows (global) with local neighbour lists."""
        st = fit["stats"]
        Ys, ts = st.labels, st.item_task
        P, A = st.prior, st.task_acc
        bma = st.best_on_average
        g = knn_mean(qi, Ys, (5, 100))
        picks = {
            "k5 argmax (today)": today_pick(g[5], bma),
            "k100 shrunk (lam by inner LOTO)": pick((1 - fit["lam100"]) * g[100] + fit["lam100"] * P, P),
            "nearest-task vote (k=20)": nearest_task_vote(qs, qi, ts, self.T, A, P),
            "HKS default knobs (no selection)": pick(query_scores(qs, qi, st, DEFAULT_KNOBS), P),
        }
        for (obj, cal), sel in fit["sel"].items():
            label = f"HKS nested [{obj}]" + ("" if cal else " uncalibrated membership")
            if obj == self.objectives[0] and cal:
                label += " (proposed)"
            picks[label] = pick(query_scores(qs, qi, st, sel.knobs), P)
        picks["BMA"] = np.full(len(queries), bma)
        return picks

    # ---------------------------------------------------------------------------------- protocols
    def loto(self, log=print):
        per_task: dict[str, list[float]] = {}
        extra: dict[str, list[float]] = {"per-query oracle": [], "per-task oracle": [], "random": []}
        sessions: dict[str, dict[int | str, list[float]]] = {}
        knob_log = []
        for d in range(self.T):
            t0 = time.perf_counter()
            store = np.flatnonzero(self.task != d)
            queries = np.flatnonzero(self.task == d)
            fit = self.fold_fit(store, d, None)
            qs, qi = self.lists(queries, "C", fit["keep"])
            qi = self.local(qi, store, self.n)
            picks = self.route_all(fit, queries, qs, qi)
            Yq = self.Y[queries]
            for k, p in picks.items():
                per_task.setdefault(k, []).append(float(Yq[np.arange(len(queries)), p].mean()))
            extra["per-query oracle"].append(float(Yq.max(1).mean()))
            extra["per-task oracle"].append(float(Yq.mean(0).max()))
            extra["random"].append(float(Yq.mean()))
            # task-level blend over the whole task (reference)
            st = fit["stats"]
            bl = fit["blend"]
            gk = knn_mean(qi, st.labels, (bl.k,))[bl.k]
            sblend = (1 - bl.lam) * gk.mean(0) + bl.lam * st.prior
            per_task.setdefault("task-level blend, whole task (reference)", []).append(
                float(Yq[:, pick(sblend[None], st.prior)[0]].mean())
            )
            # sessions
            self.session_replay(d, fit, qs, qi, Yq, gk, sessions)
            sel = fit["sel"][(self.objectives[0], True)]
            knob_log.append(
                (
                    self.tasks[d],
                    sel.knobs,
                    round(sel.gain_loto, 4),
                    round(sel.gain_loo, 4),
                    fit["lam100"],
                    fit["sess"],
                    (bl.k, bl.lam),
                )
            )
            log(
                f"  [{d + 1}/{self.T}] {self.tasks[d]}: {time.perf_counter() - t0:.1f}s knobs={sel.knobs} "
                f"inner gains loto {sel.gain_loto:+.4f} loo {sel.gain_loo:+.4f}; session {fit['sess']}"
            )
        per_task.update(extra)
        return per_task, sessions, knob_log

    def session_replay(self, d, fit, qs, qi, Yq, gk, sessions):
        st = fit["stats"]
        P = st.prior
        kn = fit["sel"][(self.objectives[0], True)].knobs
        q, g = query_scores(qs, qi, st, kn, return_g=True)
        bl = fit["blend"]
        rng = np.random.default_rng([17, d])
        n = len(Yq)
        bma = st.best_on_average
        rules = {
            "session HKS (proposed)": lambda p: session_replay_picks(q[p], g[p], P, fit["sess"]),
            "session HKS, fixed n0=3 lam_s=0.5": lambda p: session_replay_picks(
                q[p], g[p], P, SessionKnobs(n0=3.0, lam_s=0.5)
            ),
            "per-query HKS, no session": lambda p: pick(q[p], P),
            "blend over previous queries": lambda p: self._blend_stream(gk[p], P, bl.lam, q[p]),
            "BMA": lambda p: np.full(len(p), bma),
        }
        acc = {r: np.zeros(n) for r in rules}
        for _ in range(self.orders):
            p = rng.permutation(n)
            for r, f in rules.items():
                acc[r] += Yq[p, f(p)]
        for r in rules:
            a = acc[r] / self.orders
            rec = sessions.setdefault(r, {})
            for w in POSITIONS:
                if w < n:
                    rec.setdefault(w, []).append(float(a[w]))
                else:
                    rec.setdefault(w, []).append(np.nan)
            rec.setdefault("all", []).append(float(a.mean()))

    @staticmethod
    def _blend_stream(gk: np.ndarray, P: np.ndarray, lam: float, q: np.ndarray) -> np.ndarray:
        """Task-level blend over the previous queries (the first query: the per-query HKS pick)."""
        n = len(gk)
        csum = np.vstack([np.zeros((1, gk.shape[1])), np.cumsum(gk, 0)[:-1]])
        cnt = np.arange(n)[:, None]
        s = (1 - lam) * csum / np.maximum(cnt, 1) + lam * P
        s[0] = q[0]
        return pick(s, P)

    def indist(self, seed: int, log=print):
        rng = np.random.default_rng([23, seed])
        test = np.zeros(self.n, bool)
        for t in range(self.T):
            m = np.flatnonzero(self.task == t)
            test[rng.choice(m, max(1, round(self.test_fraction * len(m))), replace=False)] = True
        store, queries = np.flatnonzero(~test), np.flatnonzero(test)
        t0 = time.perf_counter()
        fit = self.fold_fit(store, None, ~test)
        qs, qi = self.lists(queries, "S", fit["keep"])
        qi = self.local(qi, store, self.n)
        picks = self.route_all(fit, queries, qs, qi)
        Yq, tq = self.Y[queries], self.task[queries]
        per_task = {}
        for k, p in picks.items():
            y = Yq[np.arange(len(queries)), p]
            per_task[k] = [float(y[tq == t].mean()) for t in range(self.T)]
        A_train = fit["stats"].task_acc
        per_task["per-query oracle"] = [float(Yq[tq == t].max(1).mean()) for t in range(self.T)]
        per_task["per-task oracle (true test accuracy)"] = [
            float(Yq[tq == t].mean(0).max()) for t in range(self.T)
        ]
        per_task["known task: argmax train accuracy of own task"] = [
            float(Yq[tq == t][:, pick(A_train[t][None], fit["stats"].prior)[0]].mean()) for t in range(self.T)
        ]
        per_task["random"] = [float(Yq[tq == t].mean()) for t in range(self.T)]
        sel = fit["sel"][(self.objectives[0], True)]
        log(
            f"  in-dist seed {seed}: {time.perf_counter() - t0:.1f}s knobs={sel.knobs} inner loto "
            f"{sel.gain_loto:+.4f} loo {sel.gain_loo:+.4f}"
        )
        return per_task, sel.knobs

    def timing(self, n_queries: int = 1000) -> dict[str, float]:
        """Time query_scores + pick for n_queries store items' neighbour lists (search excluded)."""
        stats = fit_stats(
            self.Y, self.task, n_tasks=self.T, loo=(self.nn["SS"][:, :100], self.nn["SI"][:, :100])
        )
        rows = np.random.default_rng(0).choice(self.n, n_queries, replace=self.n < n_queries)
        out = {}
        for kn in (DEFAULT_KNOBS,):
            s, i = self.nn["SS"][rows, : kn.k], self.nn["SI"][rows, : kn.k]
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                pick(query_scores(s, i, stats, kn), stats.prior)
                ts.append(time.perf_counter() - t0)
            out[f"k={kn.k}"] = min(ts)
        s, i = self.nn["SS"][rows, :100], self.nn["SI"][rows, :100]
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            pick(query_scores(s, i, stats, DEFAULT_KNOBS.__class__(k=100)), stats.prior)
            ts.append(time.perf_counter() - t0)
        out["k=100"] = min(ts)
        return out


def table(per_task: dict[str, list[float]], base: str = "BMA", title: str = "") -> str:
    b = np.asarray(per_task[base])
    lines = [f"### {title}", "", "| rule | acc | diff vs BMA (paired SE over tasks) |", "|---|---|---|"]
    for k, v in per_task.items():
        v = np.asarray(v)
        diff = v - b
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        lines.append(f"| {k} | {v.mean():.4f} | {diff.mean():+.4f} ± {se:.4f} |")
    return "\n".join(lines)


def session_table(sessions, base: str = "BMA", title: str = "") -> str:
    cols = [*POSITIONS, "all"]
    head = " | ".join(f"after {w}" if w != "all" else "whole stream" for w in cols)
    lines = [f"### {title}", "", f"| rule | {head} |", "|---|" + "---|" * len(cols)]
    b = sessions[base]
    for r, rec in sessions.items():
        cells = []
        for w in cols:
            v, bb = np.asarray(rec[w], float), np.asarray(b[w], float)
            ok = np.isfinite(v) & np.isfinite(bb)
            diff = v[ok] - bb[ok]
            se = diff.std(ddof=1) / np.sqrt(ok.sum())
            cells.append(
                f"{v[ok].mean():.3f} ({diff.mean():+.4f} ± {se:.4f})" if r != base else f"{v[ok].mean():.3f}"
            )
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="openllm_v2")
    ap.add_argument(
        "--target",
        default="auto",
        choices=("auto", "correct", "scores"),
        help="auto: raw scores (win rates) for alpacaeval2, correctness otherwise",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--orders", type=int, default=50, help="random stream orders per task (session replay)")
    ap.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    ap.add_argument("--skip-loto", action="store_true")
    ap.add_argument("--no-ablation", action="store_true", help="skip the uncalibrated-membership selection")
    ap.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    args = ap.parse_args(argv)
    if args.objectives[0] != "safe":
        args.objectives = ["safe", *[o for o in args.objectives if o != "safe"]]
    t0 = time.perf_counter()
    st = Study(
        args.dataset,
        args.target,
        args.seeds,
        args.test_fraction,
        args.orders,
        tuple(args.objectives),
        False,
        not args.no_ablation,
    )
    out = [
        f"## {args.dataset} (target: {st.target}; {st.T} tasks, {st.n} items, {st.M} models)",
        "",
        f"neighbour pass: {st.t_pass:.1f}s",
    ]
    print(out[0], flush=True)
    if not args.skip_loto:
        per_task, sessions, knob_log = st.loto()
        out += ["", table(per_task, title="LOTO per-query (each held-out task's queries routed one by one)")]
        out += [
            "",
            session_table(
                sessions,
                title=f"Session replay, LOTO ({args.orders} random orders per task); "
                "accuracy at the query after w earlier ones (diff vs BMA ± SE)",
            ),
        ]
        out += ["", "Knobs chosen per held-out task (proposed objective): "]
        from collections import Counter

        out += [f"- {c}x {kn}" for kn, c in Counter(k[1] for k in knob_log).most_common(6)]
        out += [f"- session knobs: {dict(Counter(k[5] for k in knob_log).most_common(4))}"]
        out += [f"- k100 shrunk lambdas: {dict(Counter(k[4] for k in knob_log))}"]
        out += [f"- blend (k, lambda): {dict(Counter(k[6] for k in knob_log).most_common(4))}"]
        print("\n".join(out[-12:]), flush=True)
    runs = [st.indist(s) for s in args.seeds]
    per_task = {k: list(np.mean([r[0][k] for r in runs], axis=0)) for k in runs[0][0]}
    out += [
        "",
        table(
            per_task,
            title=f"In-distribution split (stratified {1 - args.test_fraction:.0%}/"
            f"{args.test_fraction:.0%} per task, seeds {args.seeds}; per-task means over seeds)",
        ),
    ]
    out += ["", "Knobs chosen per seed: " + "; ".join(str(r[1]) for r in runs)]
    tm = st.timing()
    out += [
        "",
        "Timing of query_scores + pick for 1,000 queries (after search): "
        + ", ".join(f"{k}: {v * 1000:.1f} ms" for k, v in tm.items()),
    ]
    out += ["", f"total run time {time.perf_counter() - t0:.0f}s"]
    text = "\n".join(out)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
