"""Large stores: the neighbour index switch (numpy / FAISS flat / IVF / HNSW), memory-mapped stores
searched in blocks, compact (bit-packed) labels, and routers that save and reload those choices."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from benchroute.errors import ConfigError, IntegrityError
from benchroute.method.labels import LabelMatrix, pack_bits, unpack_bits
from benchroute.method.neighbors import NeighborIndex, default_nlist, merge_topk
from benchroute.method.predictors import KNNCorrectness
from benchroute.router.estimator import Router
from synthetic import tiny_benchmark

pytest.importorskip("faiss")


def clustered(n: int, dim: int = 32, clusters: int = 40, seed: int = 0) -> np.ndarray:
    """Unit vectors around random centres with a spread of distances inside each cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + rng.uniform(0.2, 0.8, (n, 1)) * rng.normal(size=(n, dim))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall(idx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(idx, exact, strict=True)]))


@pytest.fixture(scope="module")
def store() -> tuple[np.ndarray, np.ndarray]:
    """4,000 stored vectors and 200 queries from the same clusters (not stored)."""
    x = clustered(4200)
    return x[:4000], x[4000:]


# ------------------------------------------------------------------------------ index switch


def test_auto_switches_at_the_thresholds(store) -> None:  # type: ignore[no-untyped-def]
    x, _q = store
    kinds = {
        n: NeighborIndex(flat_min=1000, approx_min=3000).fit(x[:n]).backend_ for n in (999, 1000, 2999, 3000)
    }
    assert kinds == {999: "numpy", 1000: "faiss-flat", 2999: "faiss-flat", 3000: "faiss-ivf"}
    assert NeighborIndex(flat_min=1000, approx_min=None).fit(x).backend_ == "faiss-flat"
    assert NeighborIndex(flat_min=1000, approx_min=3000, approx="hnsw").fit(x).backend_ == "faiss-hnsw"
    info = NeighborIndex(flat_min=0, approx_min=0).fit(x).describe()
    assert info["backend"] == "faiss-ivf" and info["nlist"] == default_nlist(4000) and info["nprobe"] >= 8


def test_flat_equals_numpy_exact(store) -> None:  # type: ignore[no-untyped-def]
    x, q = store
    s_np, i_np = NeighborIndex("numpy").fit(x).search(q, 10)
    s_f, i_f = NeighborIndex(flat_min=0).fit(x).search(q, 10)  # auto above flat_min
    np.testing.assert_array_equal(i_f, i_np)
    np.testing.assert_allclose(s_f, s_np, atol=1e-5)


@pytest.mark.parametrize(
    "params",
    [
        {"backend": "faiss-ivf"},
        {"backend": "faiss-hnsw"},
        {"backend": "faiss-ivf", "ivf_codec": "SQ8", "refine": 4},
    ],
)
def test_approximate_recall_on_clustered_data(store, params) -> None:  # type: ignore[no-untyped-def]
    x, q = store
    _s_ex, exact = NeighborIndex("numpy").fit(x).search(q, 5)
    index = NeighborIndex(**params).fit(x)
    sims, idx = index.search(q, 5)
    assert recall(idx, exact) > 0.9
    # similarities are the true cosines of the returned neighbours (re-ranked exactly with refine)
    np.testing.assert_allclose(
        sims, np.einsum("nkd,nd->nk", x[idx], q), atol=2e-3 if params.get("ivf_codec") else 1e-5
    )
    assert (np.diff(sims, axis=1) <= 1e-6).all()


def test_ivf_falls_back_to_exact_when_probed_lists_are_short(store) -> None:  # type: ignore[no-untyped-def]
    x, q = store
    index = NeighborIndex("faiss-ivf", nlist=200, nprobe=1).fit(x)  # ~20 vectors per list, k = 50
    _s, i = index.search(q[:20], 50)
    _s_ex, i_ex = NeighborIndex("numpy").fit(x).search(q[:20], 50)
    assert (i >= 0).all()
    short = (index.faiss_index_.search(q[:20], 50)[1] < 0).any(axis=1)
    assert short.any()  # the case is exercised: those rows are the exact answer
    np.testing.assert_array_equal(i[short], i_ex[short])


def test_bad_index_parameters_are_config_errors(store) -> None:  # type: ignore[no-untyped-def]
    x, _ = store
    for params, match in [
        ({"backend": "annoy"}, "unknown neighbour index"),
        ({"nprobe": 0}, "nprobe"),
        ({"approx": "lsh"}, "approx"),
        ({"ivf_codec": "IVF4,Flat"}, "ivf_codec"),
        ({"backend": "faiss-ivf", "ivf_codec": "PQ7"}, "codec"),
    ]:
        with pytest.raises(ConfigError, match=match):
            NeighborIndex(**params).fit(x[:500])
    with pytest.raises(ConfigError, match="unknown neighbour index parameters"):
        KNNCorrectness(index_params={"nprobes": 3}).fit(x[:50], np.zeros((50, 2)))


def test_merge_topk_orders_ties_by_index() -> None:
    s, i = merge_topk(np.array([[0.5, 0.9, 0.5, 0.1]]), np.array([[7, 3, 2, -1]]), 3)
    assert i.tolist() == [[3, 2, 7]] and s.dtype == np.float32


# ------------------------------------------------------------------------------ memory-mapped store


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_mmap_store_searched_in_blocks_equals_in_memory(store, tmp_path: Path, dtype) -> None:  # type: ignore[no-untyped-def]
    x, q = store
    path = tmp_path / "store.npy"
    np.save(path, (x * 3.0).astype(dtype))  # not normalized on disk: blocks are normalized as read
    mapped = np.load(path, mmap_mode="r")
    index = NeighborIndex(block_rows=512).fit(mapped)
    assert index.mapped_ and index.store_ is mapped and index.backend_ == "numpy"
    s_mm, i_mm = index.search(q, 10)
    s_mem, i_mem = NeighborIndex("numpy").fit(np.load(path)).search(q, 10)
    np.testing.assert_array_equal(i_mm, i_mem)
    np.testing.assert_allclose(s_mm, s_mem, atol=1e-6)
    # the same through the predictor: labels averaged over identical neighbours
    Y = (np.random.default_rng(1).random((len(x), 5)) < 0.5).astype(np.uint8)
    np.testing.assert_array_equal(
        KNNCorrectness(k=5, index_params={"block_rows": 700}).fit(mapped, Y).predict_proba(q),
        KNNCorrectness(k=5).fit(np.load(path), Y).predict_proba(q),
    )


def test_ivf_trains_on_a_sample_of_a_mapped_store(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, q = store
    path = tmp_path / "store.npy"
    np.save(path, x.astype(np.float16))
    mapped = np.load(path, mmap_mode="r")
    index = NeighborIndex("faiss-ivf", ivf_codec="SQ8", refine=4, train_size=1000, block_rows=999).fit(mapped)
    assert index.store_ is mapped and index.faiss_index_.ntotal == len(x)
    _, exact = NeighborIndex("numpy").fit(np.load(path)).search(q, 5)
    assert recall(index.search(q, 5)[1], exact) > 0.9


# ------------------------------------------------------------------------------ compact labels


@pytest.mark.parametrize("m", [1, 8, 13])
def test_label_encodings_round_trip_and_predict_identically(store, m: int) -> None:  # type: ignore[no-untyped-def]
    x, q = store
    Y = (np.random.default_rng(m).random((len(x), m)) < 0.4).astype(np.float32)
    packed = pack_bits(Y)
    assert packed.shape == (len(x), -(-m // 8)) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_bits(packed, m), Y)
    sizes = {}
    for enc in ("bits", "uint8", "float32"):
        lm = LabelMatrix(Y, enc)  # type: ignore[arg-type]
        np.testing.assert_array_equal(lm.dense(), Y)
        sizes[enc] = lm.nbytes
    assert sizes == {"bits": len(x) * -(-m // 8), "uint8": len(x) * m, "float32": len(x) * m * 4}
    assert LabelMatrix(Y).encoding == "bits"
    for weights in ("uniform", "distance"):
        dense = KNNCorrectness(k=7, weights=weights, labels="float32").fit(x, Y).predict_proba(q)
        for enc in ("auto", "uint8"):
            np.testing.assert_array_equal(
                KNNCorrectness(k=7, weights=weights, labels=enc).fit(x, Y).predict_proba(q), dense
            )


def test_fractional_labels_stay_float32() -> None:
    Y = np.array([[0, 1], [1, 0]], np.float32)
    lm = LabelMatrix(Y).with_column(np.array([0.25, 1.0]))
    assert lm.encoding == "float32" and lm.dense()[:, 2].tolist() == [0.25, 1.0]
    assert LabelMatrix(Y).with_column(np.array([1, 0])).encoding == "bits"
    assert LabelMatrix(Y).without_column(0).dense().tolist() == [[1.0], [0.0]]
    with pytest.raises(ConfigError, match="0/1 labels only"):
        LabelMatrix(np.array([[0.5]]), "bits")


# ------------------------------------------------------------------------------ saved routers


def _router(**params) -> Router:  # type: ignore[no-untyped-def]
    return Router(alphas=(0.0, 0.2), repeats=2, draws=500, **params).fit(tiny_benchmark(per_task=40))


def _arrays(path: Path) -> dict[str, np.ndarray]:
    return st_load((path / "arrays.safetensors").read_bytes())


def _rewrite(path: Path, payload: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write (and re-sign) a router directory, e.g. as an older benchroute would have saved it."""
    blob = st_save(arrays)
    payload["arrays_sha256"] = hashlib.sha256(blob).hexdigest()
    (path / "arrays.safetensors").write_bytes(blob)
    text = json.dumps(payload, sort_keys=True)
    doc = {"payload": payload, "sha256": hashlib.sha256(text.encode()).hexdigest()}
    (path / "router.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def test_router_saves_labels_bit_packed_and_routes_identically(tmp_path: Path) -> None:
    router = _router()
    path = router.save(tmp_path / "r")
    arrays = _arrays(path)
    assert "Y" not in arrays and arrays["Y_bits"].dtype == np.uint8
    assert arrays["Y_bits"].shape == (len(router.X_), -(-len(router.models_) // 8))
    loaded = Router.load(path)
    np.testing.assert_array_equal(loaded.Y_, router.Y_)
    assert loaded.Y_.dtype == np.uint8 and loaded.predictor_.labels_.encoding == "bits"
    q = tiny_benchmark(per_task=40, seed=1).embeddings[:30]
    np.testing.assert_array_equal(loaded.predict_proba(q), router.predict_proba(q))
    assert [d.model for d in loaded.route(q)] == [d.model for d in router.route(q)]
    assert loaded.recommend(q).to_dict() == router.recommend(q).to_dict()


def test_router_with_an_approximate_index_reloads_and_routes_the_same(tmp_path: Path) -> None:
    router = _router(
        index="faiss-ivf", index_params={"nlist": 6, "nprobe": 2, "ivf_codec": "SQ8", "refine": 3}
    )
    assert router.get_params()["index"] == "faiss-ivf"
    assert router.predictor_.index_.describe()["nprobe"] == 2
    path = router.save(tmp_path / "r")
    assert "faiss-ivf" in (path / "card.md").read_text()
    loaded = Router.load(path)
    assert loaded.index == "faiss-ivf" and loaded.index_params == router.index_params
    assert loaded.predictor_.index_.describe() == router.predictor_.index_.describe()
    q = tiny_benchmark(per_task=40, seed=2).embeddings
    np.testing.assert_array_equal(loaded.predictor_.kneighbors(q)[1], router.predictor_.kneighbors(q)[1])
    assert [d.model for d in loaded.route(q)] == [d.model for d in router.route(q)]
    assert loaded.recommend(q[:20]).to_dict() == router.recommend(q[:20]).to_dict()


def test_router_with_fractional_labels_round_trips(tmp_path: Path) -> None:
    router = _router()
    y = router.Y_[:, 0].astype(float)
    y[::3] = np.nan  # not run on a third of the questions: filled with the model's mean
    router.add_model("partial", y)
    path = router.save(tmp_path / "r")
    arrays = _arrays(path)
    assert arrays["Y"].dtype == np.float32 and "Y_bits" not in arrays
    np.testing.assert_array_equal(Router.load(path).Y_, router.Y_)


def test_format_1_router_still_loads(tmp_path: Path) -> None:
    router = _router()
    path = router.save(tmp_path / "r")
    doc = json.loads((path / "router.json").read_text())
    payload = doc["payload"]
    payload["format_version"] = 1
    del payload["params"]["index"], payload["params"]["index_params"]
    arrays = _arrays(path)
    arrays["Y"] = unpack_bits(arrays.pop("Y_bits"), len(router.models_))  # format 1: uint8 0/1 labels
    _rewrite(path, payload, arrays)
    loaded = Router.load(path)
    assert loaded.index == "auto" and loaded.index_params is None
    np.testing.assert_array_equal(loaded.Y_, router.Y_)
    q = tiny_benchmark(per_task=40, seed=1).embeddings[:10]
    assert [d.model for d in loaded.route(q)] == [d.model for d in router.route(q)]
    # a tampered label array is refused with one clear error
    arrays["Y"][0, 0] = 2
    _rewrite(path, payload, arrays)
    with pytest.raises(IntegrityError, match="0/1"):
        Router.load(path)


def test_tampered_compact_labels_and_index_params_are_integrity_errors(tmp_path: Path) -> None:
    router = _router()
    path = router.save(tmp_path / "r")
    payload = json.loads((path / "router.json").read_text())["payload"]
    arrays = _arrays(path)
    m = len(router.models_)  # 4 models: the low 4 bits of each byte are padding
    cases = [
        ({**arrays, "Y_bits": arrays["Y_bits"] | 1}, payload, "past the 4 models"),
        ({**arrays, "Y_bits": arrays["Y_bits"][:, :0]}, payload, "Y_bits"),
        ({**arrays, "Y": unpack_bits(arrays["Y_bits"], m)}, payload, "exactly one label array"),
        (arrays, {**payload, "params": {**payload["params"], "index": "annoy"}}, "index"),
        (
            arrays,
            {**payload, "params": {**payload["params"], "index_params": {"nprobe": "all"}}},
            "inconsistent",
        ),
        (
            arrays,
            {**payload, "params": {**payload["params"], "index_params": {"__class__": 1}}},
            "index_params",
        ),
    ]
    for i, (a, p, match) in enumerate(cases):
        case = router.save(tmp_path / f"c{i}")
        _rewrite(case, json.loads(json.dumps(p)), a)
        with pytest.raises(IntegrityError, match=match):
            Router.load(case)
