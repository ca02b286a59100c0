"""benchroute.data.benchmark: bundled figures, a hand-computed toy benchmark, and one test per error class."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchroute.data.benchmark import (
    BUNDLED,
    Benchmark,
    bundled_path,
    load_benchmark,
    loto_figures,
    write_benchmark,
)
from benchroute.errors import ConfigError, DataError

# ------------------------------------------------------------------------------------ toy benchmark
# Three tasks, three models. Task b is continuous with threshold 0.5 (strict: 0.5 is not correct);
# a and c have no tasks.csv row, so their scores must be 0/1.
MODELS = ("m1", "m2", "m3")
VALUES = {
    ("a", "1"): (1, 0, 1),
    ("a", "2"): (0, 1, 0),
    ("b", "1"): (0.9, 0.2, 0.4),
    ("b", "2"): (0.6, 0.7, 0.1),
    ("b", "10"): (0.3, 0.4, 0.5),
    ("c", "1"): (0, 1, 1),
    ("c", "2"): (0, 1, 0),
}
HEADERS = {
    "items": "task,item_id,input",
    "scores": "task,item_id,model,score",
    "models": "model,params_b",
    "tasks": "task,metric,threshold,group",
}
ROWS = {
    "items": [f"{t},{i},question {t}{i}" for t, i in VALUES],
    "scores": [f"{t},{i},{m},{v}" for (t, i), vs in VALUES.items() for m, v in zip(MODELS, vs, strict=True)],
    "models": ["m1,7", "m2,", "m3,70"],
    "tasks": ["b,f1,0.5,grp"],
}
# Correctness per task (rows a, b, c; columns m1, m2, m3), worked out by hand from VALUES.
ACC = np.array([[1 / 2, 1 / 2, 1 / 2], [2 / 3, 1 / 3, 0], [0, 1, 1 / 2]])
RAW_ACC = np.array([[1 / 2, 1 / 2, 1 / 2], [1.8 / 3, 1.3 / 3, 1.0 / 3], [0, 1, 1 / 2]])


def edit(lines: list[str], index: int, text: str | None) -> list[str]:
    """Copy of ``lines`` with data row ``index`` replaced (or removed if ``text`` is None)."""
    out = list(lines)
    if text is None:
        del out[index]
    else:
        out[index] = text
    return out


def make_bench(root: Path, **rows: list[str] | None) -> Path:
    """Write the toy benchmark as plain CSV; a keyword replaces one file's data rows (None = omit)."""
    directory = root / "bench"
    directory.mkdir(parents=True)
    for stem, default in ROWS.items():
        lines = rows.get(stem, default)
        if lines is not None:
            (directory / f"{stem}.csv").write_text("\n".join([HEADERS[stem], *lines]) + "\n")
    return directory


@pytest.fixture
def toy(tmp_path: Path) -> Benchmark:
    return load_benchmark(make_bench(tmp_path / "toy"))


# ------------------------------------------------------------------------------------ bundled data
EXPECTED = {  # tasks, items, models, correctness figures, raw figures (PROVENANCE.md)
    "openllm_v2": (35, 8382, 78, (0.6351, 0.7070, 0.9843), None),
    "llmrouter": (14, 5989, 9, (0.6321, 0.6823, 0.8122), (0.6148, 0.6651, 0.7996)),
    "alpacaeval2": (5, 805, 51, (0.7311, 0.7407, 0.8900), (0.7184, 0.7220, 0.8996)),
}


@pytest.fixture(scope="module")
def bundled() -> dict[str, Benchmark]:
    return {name: load_benchmark(bundled_path(name)) for name in BUNDLED}


def figures(summary: dict, kind: str) -> tuple[float, float, float]:
    f = summary["figures"][kind]
    return round(f["bma_loto"], 4), round(f["task_oracle"], 4), round(f["instance_oracle"], 4)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_figures(bundled: dict[str, Benchmark], name: str) -> None:
    n_tasks, n_items, n_models, correct, raw = EXPECTED[name]
    bench = bundled[name]
    summary = bench.summary()
    json.dumps(summary, allow_nan=False)
    assert (bench.n_tasks, bench.n_items, bench.n_models) == (n_tasks, n_items, n_models)
    assert bench.scores.shape == bench.correct.shape == (n_items, n_models)
    assert figures(summary, "correct") == correct
    assert (figures(summary, "raw") if raw else None) == raw
    assert summary["dropped_models"] == [] and not np.isnan(bench.scores).any()


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_correctness_figures_match_a_naive_groupby(bundled: dict[str, Benchmark], name: str) -> None:
    """Recompute the correctness figures from the long files with plain pandas, independently."""
    directory = bundled_path(name)
    long = pd.read_csv(directory / "scores.csv.gz", dtype={"item_id": str})
    eta = long["task"].map(pd.read_csv(directory / "tasks.csv").set_index("task")["threshold"])
    long["y"] = np.where(eta.isna(), long["score"], long["score"] > eta).astype(float)
    acc = long.groupby(["task", "model"])["y"].mean().unstack()
    bma = np.mean([acc.loc[t, acc.drop(index=t).mean().idxmax()] for t in acc.index])
    instance = long.groupby(["task", "item_id"])["y"].max().groupby("task").mean().mean()
    got = bundled[name].summary()["figures"]["correct"]
    assert got["bma_loto"] == pytest.approx(bma, abs=1e-12)
    assert got["task_oracle"] == pytest.approx(acc.max(axis=1).mean(), abs=1e-12)
    assert got["instance_oracle"] == pytest.approx(instance, abs=1e-12)


def test_openllm_v2_matches_provenance(bundled: dict[str, Benchmark]) -> None:
    bench = load_benchmark("openllm_v2")  # a bundled name, not a directory (load time: benchmarks/)
    summary = bench.summary()
    assert summary["items_per_task"] == {"min": 123, "median": 250.0, "max": 541}
    assert summary["best_model"] == "rombodawg__Rombos-LLM-V2.5-Qwen-72b"
    assert round(summary["best_model_acc"], 3) == 0.647
    assert bench.items["item_id"].map(type).eq(str).all()


def test_llmrouter_cost_aliases_and_threshold(bundled: dict[str, Benchmark]) -> None:
    bench = bundled["llmrouter"]
    assert list(bench.model_info.columns[:3]) == ["params_b", "usd_per_mtok_in", "usd_per_mtok_out"]
    assert bench.model_info["usd_per_mtok_in"].notna().all()
    assert bench.thresholds["commongen"] == 0.5 and bench.thresholds["mmlu"] is None
    assert not bench.is_binary("commongen") and bench.is_binary("mmlu")
    sl = bench.task_slice("commongen")
    np.testing.assert_array_equal(bench.correct[sl], bench.scores[sl] > 0.5)


# ------------------------------------------------------------------------------------ toy: figures
def test_toy_structure_and_correct(toy: Benchmark) -> None:
    assert toy.tasks == ["a", "b", "c"] and toy.models == list(MODELS)
    assert toy.items["item_id"].tolist() == ["1", "2", "1", "2", "10", "1", "2"]
    assert toy.task_index.tolist() == [0, 0, 1, 1, 1, 2, 2] and toy.task_index.dtype == np.int32
    assert toy.task_slice("b") == slice(2, 5)
    assert toy.thresholds == {"a": None, "b": 0.5, "c": None}
    np.testing.assert_array_equal(toy.scores, np.array(list(VALUES.values()), dtype=float))
    # b: 0.9 0.2 0.4 / 0.6 0.7 0.1 / 0.3 0.4 0.5 with eta = 0.5 (0.5 itself is not correct)
    np.testing.assert_array_equal(toy.correct[2:5], [[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(toy.correct[[0, 1, 5, 6]], toy.scores[[0, 1, 5, 6]] == 1)
    assert not toy.correct.flags.writeable and toy.correct is toy.correct
    np.testing.assert_allclose(toy.accuracy(), ACC)
    np.testing.assert_allclose(toy.accuracy(correctness=False), RAW_ACC)
    assert [toy.is_binary(t) for t in toy.tasks] == [True, False, True]
    assert toy.model_info["params_b"].tolist()[::2] == [7.0, 70.0] and np.isnan(
        toy.model_info["params_b"]["m2"]
    )
    assert toy.inputs[0] == "question a1" and toy.loglik is None and toy.cost is None


def test_loto_figures_by_hand() -> None:
    f = loto_figures(ACC)
    # Leave a out: macro over b, c = (1/3, 2/3, 1/4) -> m2, which scores 1/2 on a.
    # Leave b out: over a, c = (1/4, 3/4, 1/2) -> m2 -> 1/3.  Leave c out: (7/12, 5/12, 1/4) -> m1 -> 0.
    assert f["bma_model"].tolist() == [1, 1, 0]
    assert f["bma_loto"] == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert f["oracle_model"].tolist() == [0, 0, 1]  # task a: three-way tie -> first model
    assert f["task_oracle"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    single = loto_figures(ACC[:1])
    assert np.isnan(single["bma_loto"]) and single["bma_model"].tolist() == [-1]


def test_toy_summary_by_hand(toy: Benchmark) -> None:
    s = toy.summary()
    json.dumps(s, allow_nan=False)
    assert s["figures"]["correct"] == pytest.approx(
        {"bma_loto": 5 / 18, "task_oracle": 13 / 18, "instance_oracle": (1 + 2 / 3 + 1) / 3}
    )
    # raw: b per-item max = 0.9, 0.7, 0.5; leave b out -> m2 (0.75 on a, c), which has 1.3/3 on b.
    assert s["figures"]["raw"] == pytest.approx(
        {"bma_loto": (0.5 + 1.3 / 3 + 0) / 3, "task_oracle": (0.5 + 0.6 + 1) / 3, "instance_oracle": 0.9}
    )
    assert (s["best_model"], s["best_model_acc"]) == ("m2", pytest.approx(11 / 18))
    assert s["items_per_task"] == {"min": 2, "median": 2.0, "max": 3}
    a, b, _ = s["tasks"]
    assert a == {
        "task": "a",
        "n_items": 2,
        "threshold": None,
        "binary": True,
        "oracle_model": "m1",
        "oracle_acc": 0.5,
        "instance_oracle": 1.0,
        "bma_model": "m2",
        "bma_acc": 0.5,
    }
    assert (b["raw_oracle_model"], b["raw_bma_model"], b["raw_instance_oracle"]) == (
        "m1",
        "m2",
        pytest.approx(0.7),
    )
    assert s["models"][1] == {"model": "m2", "params_b": None, "macro_acc": pytest.approx(11 / 18)}


# ------------------------------------------------------------------------------------ select / embeddings
def test_select_shapes_and_views(toy: Benchmark) -> None:
    emb = np.arange(toy.n_items * 4, dtype=np.float32).reshape(toy.n_items, 4)
    bench = toy.with_embeddings(emb)
    one = bench.select(tasks=["b"])
    assert (one.n_items, one.n_models, one.tasks) == (3, 3, ["b"])
    assert np.shares_memory(one.embeddings, emb) and np.shares_memory(one.scores, bench.scores)
    np.testing.assert_array_equal(one.correct, toy.correct[2:5])
    assert one.task_slice("b") == slice(0, 3) and list(one.task_info.index) == ["b"]

    gapped = bench.select(tasks=["c", "a"])  # benchmark order is kept: a, c
    assert gapped.tasks == ["a", "c"] and gapped.items["item_id"].tolist() == ["1", "2", "1", "2"]
    np.testing.assert_array_equal(gapped.embeddings, emb[[0, 1, 5, 6]])
    assert gapped.thresholds == {"a": None, "c": None}

    two = bench.select(models=["m3", "m1"])
    assert two.models == ["m1", "m3"] and two.embeddings is emb
    np.testing.assert_array_equal(two.scores, toy.scores[:, [0, 2]])
    assert list(two.model_info.index) == ["m1", "m3"]
    assert bench.select(tasks=["a", "b"], models=["m2"]).scores.shape == (5, 1)

    with pytest.raises(ConfigError, match="unknown task"):
        toy.select(tasks=["zz"])
    with pytest.raises(ConfigError, match="no model"):
        toy.select(models=[])


def test_with_embeddings_checks_shape(toy: Benchmark) -> None:
    assert toy.with_embeddings(np.zeros((7, 2))).embeddings.dtype == np.float32
    with pytest.raises(DataError, match=r"expected \(7, d\)"):
        toy.with_embeddings(np.zeros((6, 2), dtype=np.float32))


# ------------------------------------------------------------------------------------ formats / writing
def long_scores(bench: Benchmark) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "task": np.repeat(bench.items["task"], bench.n_models),
            "item_id": np.repeat(bench.items["item_id"], bench.n_models),
            "model": np.tile(bench.models, bench.n_items),
            "score": bench.scores.ravel(),
        }
    )


def assert_same(a: Benchmark, b: Benchmark) -> None:
    assert (a.tasks, a.models, a.thresholds) == (b.tasks, b.models, b.thresholds)
    pd.testing.assert_frame_equal(a.items, b.items)
    np.testing.assert_array_equal(a.scores, b.scores)
    pd.testing.assert_frame_equal(a.model_info, b.model_info)


def test_write_load_round_trip_is_sorted_and_reproducible(toy: Benchmark, tmp_path: Path) -> None:
    scores = long_scores(toy).sample(frac=1.0, random_state=0)  # writer must restore the order
    scores["cost"] = 0.25
    out = write_benchmark(tmp_path / "out", toy.items[::-1], scores, toy.model_info, toy.task_info)
    assert sorted(p.name for p in out.iterdir()) == [
        "items.csv.gz",
        "models.csv",
        "scores.csv.gz",
        "tasks.csv",
    ]
    text = gzip.decompress((out / "scores.csv.gz").read_bytes()).decode()
    assert text.splitlines()[:2] == ["task,item_id,model,score,cost", "a,1,m1,1.0,0.25"]
    assert [line.split(",")[1] for line in text.splitlines()[7:16:3]] == ["1", "2", "10"]  # numeric id order
    back = load_benchmark(out)
    assert_same(back, toy)
    np.testing.assert_array_equal(back.cost, np.full((7, 3), 0.25))
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    write_benchmark(
        tmp_path / "out", toy.items, long_scores(toy).assign(cost=0.25), toy.model_info, toy.task_info
    )
    assert first == {p.name: p.read_bytes() for p in out.iterdir()}

    write_benchmark(out, toy.items, long_scores(toy), compress=False)  # replaces, removes stale files
    assert sorted(p.name for p in out.iterdir()) == ["items.csv", "scores.csv"]
    with pytest.raises(DataError, match="lacks column"):
        write_benchmark(out, toy.items.drop(columns="input"), long_scores(toy))


def test_parquet_input(toy: Benchmark, tmp_path: Path) -> None:
    directory = make_bench(tmp_path, items=None, scores=None)
    toy.items.to_parquet(directory / "items.parquet")
    long_scores(toy).assign(loglik=-1.5).to_parquet(directory / "scores.parquet")
    bench = load_benchmark(directory)
    assert_same(bench, toy)
    assert bench.loglik is not None and (bench.loglik == -1.5).all()


def test_models_file_optional_and_extra_columns(tmp_path: Path) -> None:
    bench = load_benchmark(make_bench(tmp_path, models=None), name="toy")
    assert bench.name == "toy" and bench.models == list(MODELS)
    assert bench.model_info["params_b"].isna().all()
    (tmp_path / "bench" / "models.csv").write_text(
        "model,hf_repo,input_cost_per_mtok,output_cost_per_mtok\nm1,org/m1,1,2\nm2,,3,4\nm3,org/m3,5,6\n"
    )
    info = load_benchmark(tmp_path / "bench").model_info
    assert list(info.columns) == ["params_b", "usd_per_mtok_in", "usd_per_mtok_out", "hf_repo"]
    assert info["usd_per_mtok_out"].tolist() == [2.0, 4.0, 6.0] and pd.isna(info.loc["m2", "hf_repo"])


def test_interleaved_items_are_grouped_by_task(tmp_path: Path) -> None:
    items = ROWS["items"]
    bench = load_benchmark(
        make_bench(tmp_path, items=[items[2], items[0], items[3], items[4], items[1], *items[5:]])
    )
    assert bench.tasks == ["b", "a", "c"]
    assert bench.items["item_id"].tolist() == ["1", "2", "10", "1", "2", "1", "2"]
    np.testing.assert_array_equal(bench.scores[3], VALUES[("a", "1")])


def test_drop_incomplete(tmp_path: Path) -> None:
    directory = make_bench(tmp_path, scores=edit(ROWS["scores"], 11, None), models=[*ROWS["models"], "m4,1"])
    bench = load_benchmark(directory, drop_incomplete=True)
    assert bench.models == ["m1", "m2"] and bench.dropped_models == ["m3", "m4"]
    assert bench.scores.shape == (7, 2) and list(bench.model_info.index) == ["m1", "m2"]
    assert bench.summary()["dropped_models"] == ["m3", "m4"]


# ------------------------------------------------------------------------------------ validation
S = ROWS["scores"]  # data row k of scores.csv is file row k + 2; a2/m2 is k = 4
NO_THRESHOLD = "task b has non-0/1 scores (e.g. 0.9 at row 8) but no threshold in tasks.csv"
CASES = [
    # id, files, file, row, column, message fragment
    (
        "score-not-numeric",
        {"scores": edit(S, 4, "a,2,m2,abc")},
        "scores.csv",
        6,
        "score",
        "not a number: 'abc'",
    ),
    ("score-nan", {"scores": edit(S, 4, "a,2,m2,nan")}, "scores.csv", 6, "score", "nan (not a finite"),
    ("score-inf", {"scores": edit(S, 4, "a,2,m2,-inf")}, "scores.csv", 6, "score", "-inf (not a finite"),
    ("score-empty", {"scores": edit(S, 4, "a,2,m2,")}, "scores.csv", 6, "score", "empty score"),
    ("params-not-numeric", {"models": ["m1,7", "m2,big", "m3,70"]}, "models.csv", 3, "params_b", "'big'"),
    ("duplicate-item", {"items": [*ROWS["items"], "a,1,again"]}, "items.csv", 9, None, "rows 2 and 9"),
    ("duplicate-score", {"scores": [*S, "a,1,m2,1"]}, "scores.csv", 23, None, "rows 3 and 23"),
    (
        "unknown-item",
        {"scores": [*S, "a,99,m1,1"]},
        "scores.csv",
        23,
        None,
        "unknown item (task='a', item_id='99')",
    ),
    ("unknown-model", {"scores": [*S, "a,1,m9,1"]}, "scores.csv", 23, "model", "'m9' is not in"),
    (
        "model-without-scores",
        {"models": [*ROWS["models"], "m4,1"]},
        "models.csv",
        5,
        "model",
        "'m4' has no scores",
    ),
    (
        "incomplete-model",
        {"scores": edit(S, 11, None)},
        "scores.csv",
        None,
        "model",
        "'m3' has no score for 1 of 7 items (e.g. task='b', item_id='2')",
    ),
    (
        "item-without-scores",
        {"items": [*ROWS["items"], "c,3,q"]},
        "items.csv",
        9,
        None,
        "item_id='3') has no scores",
    ),
    (
        "task-without-items",
        {"tasks": [*ROWS["tasks"], "zz,acc,,"]},
        "tasks.csv",
        3,
        "task",
        "'zz' has no items",
    ),
    ("duplicate-task", {"tasks": [*ROWS["tasks"], "b,acc,0.2,"]}, "tasks.csv", 3, None, "rows 2 and 3"),
    ("duplicate-model", {"models": [*ROWS["models"], "m1,7"]}, "models.csv", 5, None, "rows 2 and 5"),
    ("empty-input", {"items": edit(ROWS["items"], 1, "a,2,  ")}, "items.csv", 3, "input", "empty input"),
    (
        "empty-item-id",
        {"items": edit(ROWS["items"], 1, "a,,text")},
        "items.csv",
        3,
        "item_id",
        "empty item_id",
    ),
    ("no-threshold", {"tasks": None}, "scores.csv", 8, "score", NO_THRESHOLD),
    ("malformed-csv", {"items": [*ROWS["items"], "a,3,text,extra"]}, "items.csv", 9, None, "malformed CSV"),
]


@pytest.mark.parametrize(
    ("files", "file", "row", "column", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_input_names_file_row_column(
    tmp_path: Path, files: dict, file: str, row: int | None, column: str | None, fragment: str
) -> None:
    with pytest.raises(DataError) as info:
        load_benchmark(make_bench(tmp_path, **files))
    err = info.value
    assert Path(err.file).name == file and err.row == row and err.column == column
    assert fragment in err.message and err.hint


def test_no_threshold_hint(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"set tasks.csv threshold for b \(e.g. 0.5\) so correct = score > threshold"
    ):
        load_benchmark(make_bench(tmp_path, tasks=None))


def error_of(directory: Path) -> DataError:
    with pytest.raises(DataError) as info:
        load_benchmark(directory)
    assert info.value.hint
    return info.value


def test_missing_directory_and_files(tmp_path: Path) -> None:
    assert "no such benchmark directory" in error_of(tmp_path / "nope").message
    directory = make_bench(tmp_path, scores=None)
    assert "no scores file" in error_of(directory).message
    (directory / "scores.csv").write_text("x")
    (directory / "items.csv").unlink()
    assert "no items file" in error_of(directory).message
    assert "is not a directory" in error_of(directory / "scores.csv").message
    with pytest.raises(DataError, match="available: alpacaeval2, llmrouter, openllm_v2"):
        bundled_path("nope")


def test_missing_column_lists_present_ones(tmp_path: Path) -> None:
    directory = make_bench(tmp_path)
    (directory / "scores.csv").write_text("task,item_id,modle,score\na,1,m1,1\n")
    err = error_of(directory)
    assert "missing column(s) model; columns present: task, item_id, modle, score" in err.message


@pytest.mark.parametrize(
    ("content", "fragment"), [(b"", "0 bytes"), (b"task,item_id,input\n", "header only")]
)
def test_empty_files(tmp_path: Path, content: bytes, fragment: str) -> None:
    directory = make_bench(tmp_path)
    (directory / "items.csv").write_bytes(content)
    err = error_of(directory)
    assert Path(err.file).name == "items.csv" and fragment in err.message


def test_non_utf8_names_offset_and_line(tmp_path: Path) -> None:
    directory = make_bench(tmp_path)
    data = "task,item_id,input\na,1,caf\xe9\na,2,x\n".encode("latin-1")
    (directory / "items.csv").write_bytes(gzip.compress(data))
    (directory / "items.csv").rename(directory / "items.csv.gz")
    err = error_of(directory)
    assert Path(err.file).name == "items.csv.gz"
    assert "byte 0xe9 at decompressed byte offset 26 (line 2)" in err.message


@pytest.mark.parametrize("kind", ["gzip", "parquet"])
def test_truncated_or_corrupt_file(toy: Benchmark, tmp_path: Path, kind: str) -> None:
    directory = make_bench(tmp_path, scores=None)
    if kind == "gzip":
        good = gzip.compress(long_scores(toy).to_csv(index=False).encode())
        (directory / "scores.csv.gz").write_bytes(good[: len(good) // 2])
        name = "scores.csv.gz"
    else:
        long_scores(toy).to_parquet(directory / "scores.parquet")
        (directory / "scores.parquet").write_bytes((directory / "scores.parquet").read_bytes()[:-40])
        name = "scores.parquet"
    err = error_of(directory)
    assert Path(err.file).name == name and "truncated or corrupt" in err.message


def test_two_formats_of_one_file_are_ambiguous(tmp_path: Path) -> None:
    directory = make_bench(tmp_path)
    (directory / "items.parquet").write_bytes(b"")
    assert "several items files: items.csv, items.parquet" in error_of(directory).message
