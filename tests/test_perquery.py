"""Per-query HKS routing and session routing (benchroute.method.perquery) on small synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from benchroute.errors import ConfigError
from benchroute.method.neighbors import exact_search, normalize
from benchroute.method.perquery import (
    RULES,
    PerQueryKnobs,
    SessionKnobs,
    SessionState,
    decide_queries,
    fit_stats,
    hks_parts,
    needed_neighbors,
    pick,
    query_scores,
    route,
    select_knobs,
    select_session_knobs,
    session_replay_picks,
    session_scores,
    take_first,
    task_accuracy,
    task_tightness,
    training_neighbors,
)
from synthetic import tiny_benchmark


@pytest.fixture(scope="module")
def bench():
    return tiny_benchmark(n_groups=3, per_group=2, per_task=25, seed=0)


def _store(b, rows=None):
    rows = np.arange(b.n_items) if rows is None else rows
    emb = normalize(b.embeddings[rows])
    y = b.correct[rows].astype(np.float32)
    t = np.asarray(b.task_index)[rows].astype(np.int64)
    return emb, y, t


def test_pick_ties_go_to_prior_favourite_not_first_model():
    prior = np.array([0.2, 0.5, 0.9, 0.1])
    scores = np.array(
        [
            [0.7, 0.7, 0.7, 0.1],  # 3-way tie: model 2 has the best prior
            [0.9, 0.9, 0.2, 0.1],  # tie of 0 and 1: 1 has the better prior
            [0.1, 0.2, 0.3, 0.95],
        ]
    )  # clear winner
    assert pick(scores, prior).tolist() == [2, 1, 3]
    # ties in the prior too: the lower index
    assert pick(np.ones((1, 3)), np.array([0.5, 0.7, 0.7])).tolist() == [1]


def test_task_accuracy_matches_per_task_means():
    y = np.array([[1, 0], [0, 0], [1, 1]], float)
    acc = task_accuracy(y, np.array([0, 0, 1]))
    np.testing.assert_allclose(acc, [[0.5, 0.0], [1.0, 1.0]])


def test_query_on_a_task_cluster_gets_that_tasks_best_model(bench):
    emb, y, t = _store(bench)
    stats = fit_stats(
        y,
        t,
        knobs=PerQueryKnobs(k=20, tau=0.1, s_task=0.5, s_item=0.9, lam=0.0),
        loo=training_neighbors(emb, t, 20)["loo"],
    )
    bma = stats.best_on_average
    assert bma == y.shape[1] - 1  # the large model, 0.7 everywhere
    checked = 0
    for d in range(bench.n_tasks):
        best = int(np.argmax(stats.task_acc[d]))
        if stats.task_acc[d, best] - stats.task_acc[d, bma] < 0.1:  # sampled accuracies: a clear winner only
            continue
        centre = normalize(emb[t == d].mean(axis=0, keepdims=True))
        s, i = exact_search(centre, emb, 20)
        assert route(s, i, stats)[0] == best != bma
        checked += 1
    assert checked >= 3


def test_query_far_from_every_task_gets_the_best_on_average_model(bench):
    emb, y, t = _store(bench)
    stats = fit_stats(y, t, knobs=PerQueryKnobs(k=20, tau=0.1, s_task=0.7, s_item=0.9, lam=0.25))
    rng = np.random.default_rng(1)
    far = normalize(rng.normal(size=(30, emb.shape[1])).astype(np.float32))
    s, i = exact_search(far, emb, 20)
    s = np.minimum(s, 0.2)  # certainly far: cosine 0.2 at most
    assert (route(s, i, stats) == stats.best_on_average).all()


def test_lam_one_is_the_best_on_average_model_and_shapes(bench):
    emb, y, t = _store(bench)
    stats = fit_stats(y, t)
    s, i = exact_search(emb[:7], emb, 50)
    q = query_scores(s, i, stats, PerQueryKnobs(k=50, lam=1.0))
    assert q.shape == (7, y.shape[1])
    assert (pick(q, stats.prior) == stats.best_on_average).all()
    with pytest.raises(ConfigError):
        query_scores(s[:, :10], i[:, :10], stats, PerQueryKnobs(k=50))
    with pytest.raises(ConfigError):
        PerQueryKnobs(tau=0.0)


def test_tightness_and_calibrated_membership(bench):
    emb, y, t = _store(bench)
    loo = training_neighbors(emb, t, 30)["loo"]
    sig = task_tightness(*loo, t, bench.n_tasks)
    assert sig.shape == (bench.n_tasks,) and np.all((sig > 0) & (sig <= 1.0 + 1e-6))
    s, i = loo
    se, _ey, W = hks_parts(s, i, y, t, bench.n_tasks, 20, 0.1, None)
    np.testing.assert_allclose(W.sum(axis=1), se, rtol=1e-6)  # uncalibrated: one kernel
    _, _, Wc = hks_parts(s, i, y, t, bench.n_tasks, 20, 0.1, sig)
    assert np.all(Wc.sum(axis=1) >= W.sum(axis=1) - 1e-9)  # sigma <= 1 only raises membership mass


def test_take_first_skips_excluded_rows():
    s = np.array([[0.9, 0.8, 0.7, 0.6], [0.5, 0.4, 0.3, 0.2]], np.float32)
    i = np.array([[3, 1, 2, 0], [0, 2, 1, 3]])
    keep = np.isin(i, [0, 1, 2])
    ss, ii = take_first(s, i, keep, 2)
    assert ii.tolist() == [[1, 2], [0, 2]]
    np.testing.assert_allclose(ss, [[0.8, 0.7], [0.5, 0.4]])
    ss, ii = take_first(s, i, keep, 3)  # row 0 has 3 admissible, row 1 too
    assert ii.shape == (2, 3)
    ss, ii = take_first(s, i, i == 0, 2)  # one admissible: padded with -inf (weight 0)
    assert ii[:, 0].tolist() == [0, 0] and np.isneginf(ss[:, 1]).all()


GRID_SMALL = {"k": (10, 20), "tau": (0.1, 0.5), "s_task": (0.5, 0.9), "s_item": (0.7, 1.0), "lam": (0.5, 0.0)}


def test_select_knobs_never_looks_at_the_held_out_task(bench):
    d = 2
    full_emb, full_y, full_t = _store(bench)
    store = np.flatnonzero(full_t != d)
    emb, y, t = full_emb[store], full_y[store], full_t[store]
    nb = training_neighbors(emb, t, 20)
    sel = select_knobs(y, t, nb["cross"], nb["loo"], grid=GRID_SMALL)
    # the held-out task's labels may be anything: the fit on the store cannot change
    poisoned = full_y.copy()
    poisoned[full_t == d] = 1.0 - poisoned[full_t == d]
    sel2 = select_knobs(poisoned[store], t, nb["cross"], nb["loo"], grid=GRID_SMALL)
    assert sel.knobs == sel2.knobs and sel.table == sel2.table
    # and its inner leave-one-task-out neighbours never come from the item's own task
    assert not np.any(t[nb["cross"][1]] == t[:, None])
    assert not np.any(nb["loo"][1] == np.arange(len(t))[:, None])


def test_select_knobs_routes_specialists_when_they_win(bench):
    emb, y, t = _store(bench)
    nb = training_neighbors(emb, t, 20)
    sel = select_knobs(y, t, nb["cross"], nb["loo"], grid=GRID_SMALL, objective="both")
    # specialists (.85 on their group) beat the large model (.7): both regimes should gain
    assert sel.gain_loo > 0.05 and sel.gain_loto > 0.0
    assert len(sel.table) == 2 * 2 * 2 * 2 * 2
    for obj in ("safe", "loto", "loo", "min"):
        assert select_knobs(y, t, nb["cross"], nb["loo"], grid=GRID_SMALL, objective=obj).objective == obj
    with pytest.raises(ConfigError):
        select_knobs(y, t, nb["cross"], nb["loo"], grid=GRID_SMALL, objective="nope")


def test_leave_one_item_out_does_not_leak_the_items_own_label():
    # pure noise labels, one task per cluster: knowing the task gives nothing, so the inner
    # leave-one-item-out gain of the pure task prior must not be positive by leaking y_i into A_t
    rng = np.random.default_rng(0)
    T, per, M = 4, 12, 6
    t = np.repeat(np.arange(T), per)
    emb = normalize((5 * rng.normal(size=(T, 8))[t] + 0.1 * rng.normal(size=(T * per, 8))).astype(np.float32))
    y = (rng.random((T * per, M)) < 0.5).astype(np.float32)
    nb = training_neighbors(emb, t, 11)
    grid = {"k": (11,), "tau": (0.5,), "s_task": (0.0,), "s_item": (-5.0,), "lam": (0.0,)}  # mu only
    loo_mean = np.mean(
        [select_knobs(y, t, nb["cross"], nb["loo"], grid=grid, objective="loo").gain_loo for _ in range(1)]
    )
    # with the leak, each item votes for the models it got right: a clearly positive gain
    assert loo_mean < 0.05


def test_session_state_is_bounded_and_replay_matches_sequential(bench):
    rng = np.random.default_rng(0)
    M = 5
    prior = rng.random(M)
    q, g = rng.random((40, M)), rng.random((40, M))
    for kn in (SessionKnobs(n0=3.0, lam_s=0.5), SessionKnobs(n0=1.0, lam_s=0.0, decay=0.9)):
        state = SessionState()
        seq = []
        for i in range(40):
            seq.append(int(pick(session_scores(q[i][None], state, prior, kn), prior)[0]))
            state.update(g[i], kn.decay)
        assert seq == session_replay_picks(q, g, prior, kn).tolist()
    state = SessionState()
    sizes = set()
    for _ in range(2000):
        state.update(rng.random(M))
        sizes.add(state.nbytes())
    assert sizes == {8 + 8 * M}
    # the first query of a session is routed on its own score
    np.testing.assert_allclose(session_scores(q[0], SessionState(), prior), q[0])


def test_session_evidence_wins_over_noisy_queries():
    # every query's own score is noisy, but the session's mean g reveals model 2
    rng = np.random.default_rng(3)
    M, n = 4, 200
    prior = np.array([0.6, 0.5, 0.55, 0.4])
    g = 0.5 + 0.3 * rng.normal(size=(n, M))
    g[:, 2] += 0.2
    picks = session_replay_picks(g, g, prior, SessionKnobs(n0=3.0, lam_s=0.0))
    assert (picks[50:] == 2).mean() > 0.95
    y = (rng.random((n, M)) < np.clip(g, 0, 1)).astype(float)
    kn = select_session_knobs(
        {0: g}, {20: {0: g}}, {0: y}, {0: prior}, grid={"k": (20,), "n0": (1.0,), "lam_s": (0.9, 0.0)}
    )
    assert kn.k == 20 and kn.lam_s == 0.0  # the session evidence is informative: not shrunk away


def test_fit_end_to_end_selects_knobs_and_routes(bench):
    from benchroute.method.perquery import fit

    emb, y, t = _store(bench)
    stats = fit(emb, y, t, grid=GRID_SMALL, session_grid={"n0": (1.0, 10.0), "lam_s": (0.5, 0.0)})
    assert stats.selection is not None and stats.knobs == stats.selection.knobs
    assert stats.tightness is not None and stats.tightness.shape == (bench.n_tasks,)
    s, i = exact_search(emb[:5], emb, stats.knobs.k)
    q, g = query_scores(s, i, stats, return_g=True)
    state = SessionState().update(g, stats.session.decay)
    assert session_scores(q, state, stats.prior, stats.session).shape == q.shape


# ---------------------------------------------------------------------------------- the contract


def _fitted(bench):
    emb, y, t = _store(bench)
    stats = fit_stats(y, t, knobs=PerQueryKnobs(k=10), session=SessionKnobs(k=10, n0=1.0, lam_s=0.5))
    return emb, y, t, stats


def test_decide_queries_rules_shapes_and_today_rule(bench):
    emb, y, _t, stats = _fitted(bench)
    s, i = exact_search(emb[:30], emb, needed_neighbors(stats))
    for rule in RULES:
        d = decide_queries(s, i, stats, rule=rule)
        assert d.chosen.shape == (30,) and d.scores.shape == d.evidence.shape == (30, y.shape[1])
        np.testing.assert_array_equal(d.chosen, pick(d.scores, stats.prior))
    knn = decide_queries(s, i, stats, rule="knn")
    np.testing.assert_allclose(knn.scores, y[i[:, :5]].mean(axis=1))
    np.testing.assert_allclose(knn.evidence, y[i[:, :10]].mean(axis=1))
    assert (decide_queries(s, i, stats).chosen == route(s, i, stats)).all()
    with pytest.raises(ConfigError):
        decide_queries(s[:, :3], i[:, :3], stats)
    with pytest.raises(ConfigError):
        decide_queries(s, i, stats, rule="nope")


def test_decide_queries_mask_and_cost_match_choose(bench):
    from benchroute.method.cost import choose

    emb, y, _t, stats = _fitted(bench)
    M = y.shape[1]
    s, i = exact_search(emb[::7], emb, needed_neighbors(stats))
    mask = np.ones(M, bool)
    mask[stats.best_on_average] = False
    d = decide_queries(s, i, stats, mask=mask)
    assert not (d.chosen == stats.best_on_average).any() and np.isneginf(d.scores[:, ~mask]).all()
    cost = np.linspace(1.0, 10.0, M)
    cost[1] = np.nan
    plain = decide_queries(s, i, stats).scores
    for cw, budget in ((0.3, None), (0.0, 5.0), (1.0, 8.0)):
        d = decide_queries(s, i, stats, cost=cost, cost_weight=cw, max_cost=budget)
        assert not (d.chosen == 1).any()
        for r in range(len(s)):
            c = choose(plain[r], cost, cost_weight=cw, max_cost=budget)
            assert d.chosen[r] == c.index or np.isclose(d.scores[r, d.chosen[r]], d.scores[r, c.index])
    with pytest.raises(ConfigError):
        decide_queries(s, i, stats, cost=cost, max_cost=0.5)


def test_decide_queries_session_in_order_and_serializable(bench):
    import json

    emb, _y, _t, stats = _fitted(bench)
    s, i = exact_search(emb[:40], emb, needed_neighbors(stats))
    batch_state = SessionState()
    batch = decide_queries(s, i, stats, session=batch_state)
    one_state = SessionState()
    for r in range(40):
        restored = SessionState.from_dict(json.loads(json.dumps(one_state.to_dict())))
        d = decide_queries(s[r : r + 1], i[r : r + 1], stats, session=restored)
        one_state = restored
        np.testing.assert_allclose(d.scores[0], batch.scores[r])
    assert one_state.n == batch_state.n == 40
    np.testing.assert_allclose(one_state.ev_sum, batch.evidence.sum(axis=0))
    # the first query is scored on its own; later ones are pulled toward the session mean
    np.testing.assert_allclose(batch.scores[0], decide_queries(s[:1], i[:1], stats).scores[0])
    assert not np.allclose(batch.scores[5:], decide_queries(s[5:], i[5:], stats).scores)
    with pytest.raises(ConfigError):
        decide_queries(s, i, stats, session=SessionState(1.0, np.zeros(3)))


def test_a_store_smaller_than_k_routes_with_every_stored_question() -> None:
    """A router fitted on fewer questions than the per-query k still routes (k shrinks to the store)."""
    rng = np.random.default_rng(0)
    emb = normalize(rng.normal(size=(12, 8)))
    labels = rng.integers(0, 2, size=(12, 3)).astype(np.float32)
    stats = fit_stats(labels, np.repeat([0, 1, 2], 4))
    assert stats.knobs.k > 12
    sims, idx = exact_search(emb[:2], emb, 12)
    chosen = decide_queries(sims, idx, stats).chosen
    assert chosen.shape == (2,) and set(chosen.tolist()) <= {0, 1, 2}
    with pytest.raises(ConfigError, match="neighbours per query"):
        decide_queries(sims[:, :5], idx[:, :5], stats)  # fewer than k while the store has more
