"""The Router on a real slice of openllm_v2 embedded with MiniLM (see conftest.py): a new task that
the router never saw, per-query routing, labeled samples, candidates, adding and removing models,
save/load round trips and tamper detection, and the errors a user can trigger."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from benchroute.embed import SMALL_MODEL
from benchroute.errors import ConfigError, IntegrityError, NotFittedError
from benchroute.method.predictors import KNNCorrectness, MLPCorrectness
from benchroute.method.scores import s3
from benchroute.router.estimator import Recommendation, Router
from synthetic import tiny_benchmark

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _check_recommendation(rec: Recommendation, models: list[str], n_inputs: int) -> None:
    """Invariants every recommendation satisfies."""
    assert [r.model for r in rec.ranking] and sorted(r.model for r in rec.ranking) == sorted(models)
    assert [r.rank for r in rec.ranking] == list(range(1, len(models) + 1))
    key = {"S1": "s1", "S2": "s2", "S3": "s3", "blend": "predicted_accuracy"}[rec.score]
    values = [getattr(r, key) for r in rec.ranking]
    assert values == sorted(values, reverse=True)  # ranked by the chosen score
    for r in rec.ranking:
        assert 0 <= r.s1 <= 1 and 0 <= r.s2 <= 1 and 0 <= r.p <= 1
        assert r.s3 == pytest.approx(float(s3(r.s2, r.p)))
        assert r.predicted_accuracy == getattr(r, key)
    # the decision and its explanation agree
    assert rec.chosen in models and rec.candidate in models and rec.best_on_average in models
    assert rec.candidate == rec.ranking[0].model
    assert isinstance(rec.reason, str) and rec.reason
    if rec.score == "blend":  # no trust rule: the blend's lambda is the shrinkage toward the BMA model
        assert rec.probability is None and rec.chosen == rec.candidate
        assert rec.extra["blend"]["k"] in (5, 10, 20, 50, 100, 200)
        # one meaning of "fell back" (API and results.json): the chain kept BMA over the score's proposal
        assert rec.fell_back == (rec.chosen == rec.best_on_average != rec.candidate) and not rec.fell_back
        held_back = rec.chosen == rec.best_on_average != rec.extra["blend"]["knn_favourite"]
        if held_back and rec.extra["blend"]["lambda"] < 1:
            assert "not far enough ahead" in rec.reason
    elif rec.probability is None:
        assert rec.candidate == rec.best_on_average and not rec.fell_back
    else:
        assert 0 <= rec.probability <= 1
        assert rec.fell_back == (rec.probability <= rec.eta)
        assert f"{rec.probability:.3f}" in rec.reason
    assert rec.chosen == (rec.best_on_average if rec.fell_back else rec.candidate)
    assert rec.n_inputs == n_inputs
    assert rec.distance > 0 and 0 <= rec.distance_percentile <= 100 and rec.closeness
    shares = [t["share"] for t in rec.nearest_tasks]
    assert shares and all(0 < s <= 1 for s in shares) and sum(shares) <= 1 + 1e-9
    assert shares == sorted(shares, reverse=True)
    json.dumps(rec.to_dict(), allow_nan=False)  # strict JSON


# ------------------------------------------------------------------------------------ new task


def test_recommend_for_a_task_left_out_of_training(  # type: ignore[no-untyped-def]
    fitted_router, minilm_bench, train_bench, held_out, held_out_task
) -> None:
    inputs, _ = held_out
    assert held_out_task not in fitted_router.tasks_
    assert fitted_router.tasks_ == [t for t in minilm_bench.tasks if t != held_out_task]
    rec = fitted_router.recommend(inputs)
    _check_recommendation(rec, train_bench.models, len(inputs))
    assert rec.score == "S3" and rec.n_labeled == 0 and rec.few_shot is None
    assert {t["task"] for t in rec.nearest_tasks} <= set(fitted_router.tasks_)
    # best on average = the highest mean per-task accuracy over the training tasks
    macro = train_bench.accuracy().mean(axis=0)
    assert macro[train_bench.models.index(rec.best_on_average)] == macro.max()


def test_recommend_scores_follow_the_predictions(fitted_router, held_out) -> None:  # type: ignore[no-untyped-def]
    inputs, _ = held_out
    rec = fitted_router.recommend(inputs)
    g = fitted_router.predict_proba(inputs)
    assert g.shape == (len(inputs), len(fitted_router.models_))
    by_model = {r.model: r for r in rec.ranking}
    for j, m in enumerate(fitted_router.models_):
        assert by_model[m].s1 == pytest.approx(g[:, j].mean(), abs=1e-6)
        assert by_model[m].s2 == pytest.approx((g[:, j] > 0.5).mean())
    # p comes from the kernel smoother at the task's distance u
    p = fitted_router.estimate_p(rec.distance, g)
    for j, m in enumerate(fitted_router.models_):
        assert by_model[m].p == pytest.approx(p[j])


def test_recommend_is_deterministic(fitted_router, held_out) -> None:  # type: ignore[no-untyped-def]
    inputs, _ = held_out
    assert fitted_router.recommend(inputs).to_dict() == fitted_router.recommend(inputs).to_dict()


@pytest.mark.parametrize("score", ["S1", "S2"])
def test_other_scores_rank_the_models(make_router, train_bench, held_out, score: str) -> None:  # type: ignore[no-untyped-def]
    inputs, _ = held_out
    rec = make_router(score=score).recommend(inputs)
    assert rec.score == score
    _check_recommendation(rec, train_bench.models, len(inputs))


def test_default_blend_router(make_router, train_bench, held_out, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert Router().score == "blend"
    inputs, _ = held_out
    router = make_router(score="blend")
    rec = router.recommend(inputs)
    _check_recommendation(rec, train_bench.models, len(inputs))
    blend = rec.extra["blend"]
    assert blend["lambda"] in router.blend_lambdas and blend["inner_accuracy"] >= blend["bma_inner_accuracy"]
    top = rec.ranking[0]
    assert top.predicted_accuracy >= rec.ranking[-1].predicted_accuracy
    assert Router.load(router.save(tmp_path / "r")).recommend(inputs).to_dict() == rec.to_dict()


def test_labels_arbitrate_by_the_rule_chosen_at_fit(make_router, held_out, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from benchroute.method.scores import LABEL_GRID, LABEL_RULES

    inputs, _ = held_out
    router = make_router(score="blend")
    assert set(router.label_rules_) == set(LABEL_GRID) and set(router.label_rules_.values()) <= set(
        LABEL_RULES
    )
    plain = router.recommend(inputs[10:])
    order = [router.models_.index(r.model) for r in plain.ranking]
    third = order[2]  # the blend's third model is right on every labeled sample, the others never
    Y = np.zeros((10, len(router.models_)), np.float32)
    Y[:, third] = 1
    router.label_rules_ = {s: "top3" for s in LABEL_GRID}
    rec = router.recommend(inputs[10:], labeled=(inputs[:10], Y))
    assert rec.chosen == router.models_[third] != rec.candidate
    assert rec.extra["labels"] == {"rule": "top3", "n_labeled": 10, "rule_for": 10}
    assert "top 3" in rec.reason and "10 labeled samples" in rec.reason
    # the rule travels with the saved router
    again = Router.load(router.save(tmp_path / "r"))
    assert again.label_rules_ == router.label_rules_
    card = (tmp_path / "r" / "card.md").read_text()
    assert "10 labels: top3" in card and f"k={router.blend_.k}" in card
    assert again.recommend(inputs[10:], labeled=(inputs[:10], Y)).to_dict() == rec.to_dict()
    # "none": the labels only join the training data (the blend's choice stands)
    router.label_rules_ = {s: "none" for s in LABEL_GRID}
    rec = router.recommend(inputs[10:], labeled=(inputs[:10], Y))
    assert "labels" not in rec.extra and rec.chosen in (rec.candidate, rec.best_on_average)


def test_trust_off_never_falls_back(make_router, held_out) -> None:  # type: ignore[no-untyped-def]
    inputs, _ = held_out
    rec = make_router(trust=False).recommend(inputs)
    assert rec.probability is None and not rec.fell_back
    assert rec.chosen == rec.candidate == rec.ranking[0].model


def test_eta_one_always_falls_back(make_router, held_out) -> None:  # type: ignore[no-untyped-def]
    inputs, _ = held_out
    rec = make_router(eta=1.0).recommend(inputs)
    assert rec.chosen == rec.best_on_average
    assert rec.fell_back == (rec.candidate != rec.best_on_average)


def test_atc_p_estimator(make_router, train_bench, held_out) -> None:  # type: ignore[no-untyped-def]
    inputs, _ = held_out
    router = make_router(p_estimator="atc")
    rec = router.recommend(inputs)
    _check_recommendation(rec, train_bench.models, len(inputs))
    g = router.predict_proba(inputs)
    expected = router.atc_.predict(np.maximum(g, 1 - g))
    np.testing.assert_allclose(
        [r.p for r in sorted(rec.ranking, key=lambda r: router.models_.index(r.model))], expected
    )


# ---------------------------------------------------------------------------------------- route


def test_route_answers_queries(fitted_router, held_out, new_query) -> None:  # type: ignore[no-untyped-def]
    inputs, _ = held_out
    queries = [*inputs[:3], new_query]
    decisions = fitted_router.route(queries, rule="knn")  # the former rule, kept by name
    assert [d.input_index for d in decisions] == [0, 1, 2, 3]
    g = fitted_router.predict_proba(queries)
    bma = fitted_router.models_[fitted_router.best_on_average_]
    for d, row in zip(decisions, g, strict=True):
        assert set(d.per_model) == set(fitted_router.models_)
        assert d.probability == d.per_model[d.model] == pytest.approx(row.max())
        tied = [m for m, v in d.per_model.items() if v == row.max()]
        if len(tied) > 1:
            assert "tie" in d.reason
            if bma in tied:
                assert d.model == bma
        json.dumps(d.__dict__, allow_nan=False)


def test_default_route_is_task_aware_and_sessions_accumulate(fitted_router, held_out, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The default rule (hks) scores with the knobs chosen at fit; a session routes each query with the
    evidence of the earlier ones (bounded state), the same whether the stream comes in one call or
    query by query; save/load keeps the per-query knobs and decisions."""
    from benchroute.method.perquery import decide_queries

    inputs, _ = held_out
    stats = fitted_router.perquery_
    decisions = fitted_router.route(inputs[:6])
    X = fitted_router.embed(inputs[:6])
    sims, idx = fitted_router._store_search(X, stats.knobs.k)
    expected = decide_queries(sims, idx, stats).chosen
    assert [d.model for d in decisions] == [fitted_router.models_[j] for j in expected]
    assert all(d.reason.startswith("hks:") for d in decisions)
    one_call = fitted_router.new_session()
    streamed = fitted_router.new_session()
    batch = [d.model for d in fitted_router.route(inputs[:20], session=one_call)]
    single = [fitted_router.route([q], session=streamed)[0].model for q in inputs[:20]]
    assert batch == single and one_call.n == streamed.n == 20
    assert np.allclose(one_call.ev_sum, streamed.ev_sum)
    assert one_call.nbytes() <= 8 + 8 * len(fitted_router.models_)  # bounded: one float per model
    assert "earlier queries of the session" in fitted_router.route(inputs[20:21], session=one_call)[0].reason
    fitted_router.save(tmp_path / "r")
    loaded = Router.load(tmp_path / "r")
    assert loaded.perquery_.knobs == stats.knobs and loaded.perquery_.session == stats.session
    assert [d.model for d in loaded.route(inputs[:6])] == [d.model for d in decisions]


def test_route_with_candidates(fitted_router, held_out) -> None:  # type: ignore[no-untyped-def]
    inputs, _ = held_out
    cands = fitted_router.models_[5:9]
    for d in fitted_router.route(inputs[:5], candidates=cands):
        assert d.model in cands and set(d.per_model) == set(cands)


# ---------------------------------------------------------------------------- labeled samples


def test_recommend_with_labeled_samples(fitted_router, train_bench, held_out) -> None:  # type: ignore[no-untyped-def]
    inputs, Y = held_out
    plain = fitted_router.recommend(inputs[10:])
    rec = fitted_router.recommend(inputs[10:], labeled=(inputs[:10], Y[:10]))
    _check_recommendation(rec, train_bench.models, len(inputs) - 10)
    assert rec.n_labeled == 10
    assert rec.few_shot is not None and set(rec.few_shot) == set(fitted_router.models_)
    for j, m in enumerate(fitted_router.models_):
        assert rec.few_shot[m] == pytest.approx(Y[:10, j].mean())
    # samples of the new task itself are its nearest training inputs: the task looks closer
    assert rec.distance < plain.distance
    # the same samples as records give the same recommendation
    records = [
        {"input": x, "correct": {m: int(Y[i, j]) for j, m in enumerate(fitted_router.models_)}}
        for i, x in enumerate(inputs[:10])
    ]
    assert fitted_router.recommend(inputs[10:], labeled=records).to_dict() == rec.to_dict()


def test_labeled_samples_are_validated(fitted_router, held_out) -> None:  # type: ignore[no-untyped-def]
    inputs, Y = held_out
    with pytest.raises(ConfigError, match="one column per model"):
        fitted_router.recommend(inputs, labeled=(inputs[:3], Y[:3, :5]))
    with pytest.raises(ConfigError, match="0 or 1"):
        fitted_router.recommend(inputs, labeled=(inputs[:3], Y[:3] * 0.5 + 0.25))
    with pytest.raises(ConfigError, match="lacks results"):
        fitted_router.recommend(
            inputs, labeled=[{"input": inputs[0], "correct": {fitted_router.models_[0]: 1}}]
        )
    with pytest.raises(ConfigError, match="labeled sample 0"):
        fitted_router.recommend(inputs, labeled=[{"text": inputs[0]}])


# ---------------------------------------------------------------------------------- candidates


def test_candidates_restrict_the_choice(fitted_router, train_bench, held_out) -> None:  # type: ignore[no-untyped-def]
    inputs, _ = held_out
    cands = [train_bench.models[j] for j in (3, 11, 40, 60)]
    rec = fitted_router.recommend(inputs, candidates=cands)
    _check_recommendation(rec, cands, len(inputs))
    macro = train_bench.accuracy().mean(axis=0)
    best = max(cands, key=lambda m: macro[train_bench.models.index(m)])
    assert rec.best_on_average == best
    # a candidate's scores do not depend on who else is a candidate
    full = {r.model: r for r in fitted_router.recommend(inputs).ranking}
    for r in rec.ranking:
        assert (r.s1, r.s2, r.s3, r.p) == (
            full[r.model].s1,
            full[r.model].s2,
            full[r.model].s3,
            full[r.model].p,
        )


def test_single_candidate(fitted_router, held_out) -> None:  # type: ignore[no-untyped-def]
    inputs, _ = held_out
    only = fitted_router.models_[7]
    rec = fitted_router.recommend(inputs, candidates=[only])
    assert rec.chosen == rec.candidate == rec.best_on_average == only
    assert rec.probability is None and len(rec.ranking) == 1


# --------------------------------------------------------------------------- add / remove model


def test_add_copy_of_a_model_then_remove_it(make_router, train_bench, held_out) -> None:  # type: ignore[no-untyped-def]
    inputs, _ = held_out
    router = make_router()
    before = router.recommend(inputs).to_dict()
    source = train_bench.models[20]
    j = train_bench.models.index(source)
    router.add_model("copy", train_bench.correct[:, j].astype(float), params_b=7.0)
    assert router.models_[-1] == "copy"
    g = router.predict_proba(inputs)
    np.testing.assert_array_equal(g[:, -1], g[:, j])
    rows = {r.model: r for r in router.recommend(inputs).ranking}
    for field in ("s1", "s2", "s3", "p"):
        assert getattr(rows["copy"], field) == getattr(rows[source], field)
    assert rows["copy"].params_b == 7.0
    router.remove_model("copy")
    assert router.recommend(inputs).to_dict() == before


def test_removing_a_model_refits_the_blend_like_a_fresh_fit(make_router, train_bench, held_out) -> None:  # type: ignore[no-untyped-def]
    router = make_router(score="blend")
    bma = router.models_[router.best_on_average_]
    router.remove_model(bma)  # the model every blend was shrunk toward
    fresh = Router(**router.get_params()).fit(
        train_bench.select(models=[m for m in train_bench.models if m != bma])
    )
    assert router.blend_ == fresh.blend_ and router.label_rules_ == fresh.label_rules_
    assert router.recommend(held_out[0]).to_dict() == fresh.recommend(held_out[0]).to_dict()


def test_add_model_with_partial_results(make_router, train_bench, held_out) -> None:  # type: ignore[no-untyped-def]
    router = make_router()
    y = train_bench.correct[:, 0].astype(float)
    y[::2] = np.nan  # not run on half of the questions
    router.add_model("partial", y)
    rec = router.recommend(held_out[0])
    assert "partial" in [r.model for r in rec.ranking]


def test_add_and_remove_model_errors(make_router, train_bench) -> None:  # type: ignore[no-untyped-def]
    router = make_router()
    y = train_bench.correct[:, 0].astype(float)
    with pytest.raises(ConfigError, match="already exists"):
        router.add_model(train_bench.models[0], y)
    with pytest.raises(ConfigError, match="one result per stored question"):
        router.add_model("short", y[:10])
    with pytest.raises(ConfigError, match="0/1"):
        router.add_model("graded", y * 0.5)
    with pytest.raises(ConfigError, match="no results"):
        router.add_model("empty", np.full_like(y, np.nan))
    with pytest.raises(ConfigError, match="unknown model"):
        router.remove_model("nobody")
    removed = train_bench.models[3]
    router.remove_model(removed)
    assert removed not in router.models_ and len(router.models_) == train_bench.n_models - 1


# ------------------------------------------------------------------------------------ save / load


def test_save_load_recommend_identical(fitted_router, held_out, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inputs, _ = held_out
    path = fitted_router.save(tmp_path / "router", card_extra={"note": "test"})
    assert {p.name for p in path.iterdir()} == {"router.json", "arrays.safetensors", "card.md"}
    loaded = Router.load(path)
    assert loaded.get_params() == fitted_router.get_params()
    assert loaded.recommend(inputs).to_dict() == fitted_router.recommend(inputs).to_dict()
    assert [d.__dict__ for d in loaded.route(inputs[:5])] == [
        d.__dict__ for d in fitted_router.route(inputs[:5])
    ]
    card = (path / "card.md").read_text()
    assert SMALL_MODEL in card and "## note" in card
    assert all(t in card for t in fitted_router.tasks_) and fitted_router.models_[0] in card
    # no pickle anywhere
    assert b"pickle" not in (path / "router.json").read_bytes()


def test_save_load_same_best_on_average_for_tied_candidates(fitted_router, held_out, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # two models whose macro accuracies are equal in float32 but not in float64 on this data slice
    inputs, _ = held_out
    cands = ["MaziyarPanahi__calme-2.3-rys-78b", "abacusai__Dracarys-72B-Instruct"]
    loaded = Router.load(fitted_router.save(tmp_path / "router"))
    assert (
        loaded.recommend(inputs, candidates=cands).to_dict()
        == fitted_router.recommend(inputs, candidates=cands).to_dict()
    )


def test_save_load_logreg_predictor(train_bench, held_out, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inputs, _ = held_out
    small = train_bench.select(models=train_bench.models[:4])
    router = Router(predictor="logreg", embedding_model=SMALL_MODEL).fit(small)
    loaded = Router.load(router.save(tmp_path / "r"))
    assert loaded.recommend(inputs).to_dict() == router.recommend(inputs).to_dict()


@pytest.mark.parametrize(
    "predictor",
    [KNNCorrectness(k=3, weights="distance"), MLPCorrectness(hidden=(16,), epochs=3)],
    ids=["knn-distance", "mlp-small"],
)
def test_save_load_predictor_instance(train_bench, held_out, tmp_path: Path, predictor) -> None:  # type: ignore[no-untyped-def]
    inputs, _ = held_out
    small = train_bench.select(models=train_bench.models[:6])
    router = Router(predictor=predictor, embedding_model=SMALL_MODEL, repeats=2).fit(small)
    loaded = Router.load(router.save(tmp_path / "r"))
    assert loaded.recommend(inputs).to_dict() == router.recommend(inputs).to_dict()


def test_knn_instance_equals_knn_by_name(train_bench, held_out) -> None:  # type: ignore[no-untyped-def]
    inputs, _ = held_out
    small = train_bench.select(models=train_bench.models[:6])
    by_instance = Router(predictor=KNNCorrectness(k=3), embedding_model=SMALL_MODEL, repeats=2).fit(small)
    by_name = Router(predictor="knn", k=3, embedding_model=SMALL_MODEL, repeats=2).fit(small)
    assert by_instance.recommend(inputs).to_dict() == by_name.recommend(inputs).to_dict()


@pytest.fixture(scope="module")
def saved_router(fitted_router, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    return fitted_router.save(tmp_path_factory.mktemp("saved") / "router")


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_flipped_byte_in_arrays_is_detected(saved_router: Path, tmp_path: Path) -> None:
    router_dir = _copy(saved_router, tmp_path / "r")
    target = router_dir / "arrays.safetensors"
    original = target.read_bytes()
    positions = sorted(
        {
            0,
            7,
            8,
            100,
            len(original) // 2,
            len(original) - 1,
            *np.random.default_rng(0).integers(0, len(original), 20).tolist(),
        }
    )
    for pos in positions:
        data = bytearray(original)
        data[pos] ^= 0xFF
        target.write_bytes(bytes(data))
        with pytest.raises(IntegrityError, match=r"arrays\.safetensors: checksum mismatch"):
            Router.load(router_dir)
    target.write_bytes(original)
    Router.load(router_dir)  # intact again


def test_flipped_byte_in_manifest_is_detected(saved_router: Path, tmp_path: Path) -> None:
    router_dir = _copy(saved_router, tmp_path / "r")
    target = router_dir / "router.json"
    original = target.read_bytes()
    # the first and last 32 bytes and 250 random ones (each write costs ~3 ms on this disk), with the
    # subtlest change: one bit, which mostly keeps the JSON valid
    n = len(original)
    positions = {*range(32), *range(n - 32, n), *np.random.default_rng(1).integers(0, n, 250).tolist()}
    for pos in sorted(positions):
        data = bytearray(original)
        data[pos] ^= 0x01
        target.write_bytes(bytes(data))
        with pytest.raises(
            IntegrityError, match=r"router\.json: (checksum mismatch|not a valid router manifest)"
        ):
            Router.load(router_dir)


@pytest.mark.parametrize("name", ["arrays.safetensors", "router.json"])
def test_truncated_file_is_detected(saved_router: Path, tmp_path: Path, name: str) -> None:
    router_dir = _copy(saved_router, tmp_path / "r")
    target = router_dir / name
    data = target.read_bytes()
    assert data.endswith(b"}\n") or name != "router.json"
    for keep in (
        0,
        1,
        len(data) // 2,
        len(data) - 2,
    ):  # (dropping only router.json's final newline is harmless)
        target.write_bytes(data[:keep])
        with pytest.raises(IntegrityError, match=re.escape(name)):
            Router.load(router_dir)


def test_missing_router_is_detected(saved_router: Path, tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="no saved router here"):
        Router.load(tmp_path / "does-not-exist")
    router_dir = _copy(saved_router, tmp_path / "r")
    (router_dir / "arrays.safetensors").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        Router.load(router_dir)


def test_unsupported_format_version(saved_router: Path, tmp_path: Path) -> None:
    import hashlib

    router_dir = _copy(saved_router, tmp_path / "r")
    doc = json.loads((router_dir / "router.json").read_text())
    doc["payload"]["format_version"] = 999
    doc["sha256"] = hashlib.sha256(json.dumps(doc["payload"], sort_keys=True).encode()).hexdigest()
    (router_dir / "router.json").write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="unsupported router format"):
        Router.load(router_dir)


# ---------------------------------------------------------------------------------- user errors


def test_unknown_candidate_is_config_error(fitted_router, held_out) -> None:  # type: ignore[no-untyped-def]
    inputs, _ = held_out
    with pytest.raises(ConfigError, match="unknown model 'gpt-17'"):
        fitted_router.recommend(inputs, candidates=[fitted_router.models_[0], "gpt-17"])
    with pytest.raises(ConfigError, match="unknown model"):
        fitted_router.route(inputs[:1], candidates=["gpt-17"])


def test_empty_inputs_are_config_errors(fitted_router) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="no inputs"):
        fitted_router.recommend([])
    with pytest.raises(ConfigError, match="list of texts"):
        fitted_router.recommend("just one string")
    with pytest.raises(ConfigError, match="non-empty"):
        fitted_router.recommend(["fine", "   "])
    with pytest.raises(ConfigError, match="no inputs"):
        fitted_router.route([])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_empty_embedding_array_is_config_error(fitted_router) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError):
        fitted_router.recommend(np.zeros((0, fitted_router.X_.shape[1]), dtype=np.float32))


def test_unfitted_router_raises() -> None:
    router = Router()
    for call in (
        lambda: router.recommend(["x"]),
        lambda: router.route(["x"]),
        lambda: router.save("/nonexistent"),
    ):
        with pytest.raises(NotFittedError, match="not fitted"):
            call()


@pytest.mark.parametrize(
    ("params", "match"),
    [({"score": "S4"}, "score must be"), ({"p_estimator": "magic"}, "p_estimator"), ({"eta": 1.5}, "eta")],
)
def test_bad_router_params(train_bench, params: dict, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=match):
        Router(embedding_model=SMALL_MODEL, **params).fit(train_bench)


def test_needs_two_tasks(train_bench) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="at least 2 benchmark tasks"):
        Router(embedding_model=SMALL_MODEL).fit(train_bench.select(tasks=[train_bench.tasks[0]]))


# ------------------------------------------------------------------------------------------- docs


def test_json_output_doc_covers_every_field(fitted_router, held_out) -> None:  # type: ignore[no-untyped-def]
    inputs, Y = held_out
    doc = (DOCS / "json-output.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_0-9.\[\]]+)`", doc, flags=re.MULTILINE))
    rec = fitted_router.recommend(inputs[2:], labeled=(inputs[:2], Y[:2])).to_dict()
    keys = set(rec) | {f"ranking[].{k}" for k in rec["ranking"][0]}
    keys |= {f"nearest_tasks[].{k}" for k in rec["nearest_tasks"][0]}
    keys |= {f"route[].{k}" for k in fitted_router.route(inputs[:1])[0].__dict__}
    assert keys <= documented, f"undocumented JSON fields: {sorted(keys - documented)}"
    assert documented <= keys, f"documented fields that no longer exist: {sorted(documented - keys)}"


def test_router_follows_the_scikit_learn_estimator_contract() -> None:
    """Constructor stores parameters unchanged, clone / get_params / set_params / repr work, fit returns
    self, and a refit replaces all learned state (a blend router refitted as S3 keeps no blend_)."""
    from sklearn.base import clone

    alphas = [0.0, 0.1]
    router = Router(k=7, alphas=alphas, draws=300, repeats=2, blend_ks=(5, 10))
    assert router.alphas is alphas  # stored as given; validation happens in fit
    params = router.get_params()
    assert params["k"] == 7 and params["alphas"] is alphas and set(params) == set(Router().get_params())
    twin = clone(router)
    assert twin is not router and twin.get_params() == params
    assert repr(router) == "Router(k=7, alphas=[0.0, 0.1], repeats=2, draws=300, blend_ks=(5, 10))"
    assert router.set_params(k=3, eta=0.7) is router and router.k == 3 and router.eta == 0.7
    with pytest.raises(ConfigError, match="invalid parameter 'nope'"):
        router.set_params(nope=1)
    with_instance = Router(predictor=KNNCorrectness(k=4))
    deep = with_instance.get_params(deep=True)
    assert deep["predictor__k"] == 4 and "predictor__k" not in with_instance.get_params(deep=False)
    with_instance.set_params(predictor__k=9)
    assert with_instance.predictor.k == 9
    assert Router(p_estimator="true").p_estimator == "true"  # constructing never validates ...
    bench = tiny_benchmark()
    with pytest.raises(ConfigError, match="p_estimator"):  # ... fit does (an evaluation-only oracle)
        Router(p_estimator="true").fit(bench)
    fitted = Router(repeats=2, draws=300, blend_ks=(5, 10)).fit(bench)
    assert hasattr(fitted, "blend_") and hasattr(fitted, "label_rules_")
    assert fitted.set_params(score="S3").fit(bench) is fitted
    assert not hasattr(fitted, "blend_") and not hasattr(fitted, "label_rules_")
    assert not hasattr(clone(fitted), "predictor_")  # clone copies parameters, never learned state


def test_labeled_matrix_is_the_one_validation_of_labeled_samples(fitted_router) -> None:  # type: ignore[no-untyped-def]
    models = fitted_router.models_
    row = dict.fromkeys(models, 0) | {models[1]: 1}
    Y = fitted_router.labeled_matrix([row, dict.fromkeys(models, 1)])
    assert Y.shape == (2, len(models)) and Y[0].tolist() == [float(m == models[1]) for m in models]
    for bad, match in (
        ({**row, "gpt-17": 1}, "unknown model"),
        ({m: 0 for m in models[1:]}, "lacks results"),
        ({**row, models[0]: "yes"}, "must be 0 or 1"),
        ({**row, models[0]: True}, "must be 0 or 1"),
        ("not a dict", "must map every model"),
    ):
        with pytest.raises(ConfigError, match=match):
            fitted_router.labeled_matrix([row, bad])
