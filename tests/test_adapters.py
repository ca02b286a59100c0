"""Import adapters: HELM run dirs, long tables and lm-eval samples -> a loadable benchmark directory.

Expected values are computed from the raw fixture files (HELM's own stats.json, the harness's own
results_*.json), never copied from the adapter's output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchroute.data.adapters import import_helm, import_lmeval, import_table
from benchroute.data.adapters.helm import split_run_name
from benchroute.data.adapters.lmeval import lmeval_to_benchmark
from benchroute.data.adapters.table import build_benchmark
from benchroute.data.benchmark import load_benchmark
from benchroute.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"
HELM_RUN = FIXTURES / "helm_run"
LMEVAL = FIXTURES / "lmeval"
HELM_TASK = "babi_qa:task=15"
HELM_MODEL = "AlephAlpha/luminous-base"
PYTHIA, QWEN = "EleutherAI/pythia-160m", "Qwen/Qwen2.5-0.5B"


def _load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _dump(obj, path: Path) -> None:
    path.write_text(json.dumps(obj), encoding="utf-8")


def _score(bench, task: str, item_id: str, model: str) -> float:
    row = np.flatnonzero(
        (bench.items["task"] == task).to_numpy() & (bench.items["item_id"] == item_id).to_numpy()
    )
    assert len(row) == 1, (task, item_id)
    return float(bench.scores[row[0], bench.models.index(model)])


# --------------------------------------------------------------------------- HELM


def _helm_stat_mean(name: str, split: str) -> tuple[float, int]:
    """HELM's own aggregate for (metric, split), unperturbed, and the number of instances in that split."""
    stats = _load(HELM_RUN / "stats.json")
    (entry,) = [s for s in stats if s["name"] == {"name": name, "split": split}]
    n = sum(1 for inst in _load(HELM_RUN / "instances.json") if inst["split"] == split)
    return entry["mean"], n


def test_helm_fixture_imports_one_task_and_matches_helm_aggregate(tmp_path):
    summary = import_helm(HELM_RUN, tmp_path / "all")
    assert (summary["tasks"], summary["items"], summary["models"]) == (1, 1000, 1)
    bench = load_benchmark(tmp_path / "all")
    assert bench.tasks == [HELM_TASK] and bench.models == [HELM_MODEL]
    assert bench.scores.shape == (1000, 1)
    # 3 train trials averaged: every score is k/3, so the task gets threshold 0.5 (majority of trials).
    assert np.allclose(bench.scores * 3, np.round(bench.scores * 3))
    assert bench.scores.min() >= 0 and bench.scores.max() <= 1
    assert bench.thresholds == {HELM_TASK: 0.5}
    assert bench.task_info.loc[HELM_TASK, "metric"] == "quasi_exact_match"

    instances = {inst["id"]: inst["input"]["text"] for inst in _load(HELM_RUN / "instances.json")}
    assert dict(zip(bench.items["item_id"], bench.items["input"], strict=False)) == instances

    (test_mean, n_test), (valid_mean, n_valid) = (
        _helm_stat_mean("quasi_exact_match", s) for s in ("test", "valid")
    )
    assert bench.scores.mean() == pytest.approx(
        (test_mean * n_test + valid_mean * n_valid) / (n_test + n_valid)
    )

    summary = import_helm(HELM_RUN, tmp_path / "test", split="test")
    assert summary["items"] == n_test == 909
    assert load_benchmark(tmp_path / "test").scores.mean() == pytest.approx(test_mean)


def _copy_run(dst: Path, model: str) -> Path:
    shutil.copytree(HELM_RUN, dst)
    spec = _load(dst / "run_spec.json")
    spec["name"] = spec["name"].replace("AlephAlpha_luminous-base", model.replace("/", "_"))
    spec["adapter_spec"]["model"] = model
    _dump(spec, dst / "run_spec.json")
    return dst


def test_helm_merges_models_on_shared_instances(tmp_path):
    runs = tmp_path / "runs"
    _copy_run(runs / "a", HELM_MODEL)
    other = _copy_run(runs / "nested" / "b", "Other/model-7b")
    instances = _load(other / "instances.json")
    _dump(instances[10:], other / "instances.json")  # model b never saw the first 10 instances
    predictions = _load(other / "display_predictions.json")
    for p in predictions:
        p["stats"]["quasi_exact_match"] = 1.0
    _dump(predictions, other / "display_predictions.json")

    summary = import_helm(runs, tmp_path / "out")
    assert (summary["tasks"], summary["items"], summary["models"]) == (1, 990, 2)
    assert summary["items_dropped"] == 10
    bench = load_benchmark(tmp_path / "out")
    assert bench.tasks == [HELM_TASK]
    assert sorted(bench.models) == sorted([HELM_MODEL, "Other/model-7b"])
    assert set(bench.items["item_id"]) == {inst["id"] for inst in instances[10:]}
    assert (bench.scores[:, bench.models.index("Other/model-7b")] == 1.0).all()
    import_helm(HELM_RUN, tmp_path / "single")
    single = load_benchmark(tmp_path / "single")
    kept = single.items["item_id"].isin(bench.items["item_id"]).to_numpy()
    expected = dict(zip(single.items["item_id"][kept], single.scores[kept, 0], strict=False))
    got = dict(zip(bench.items["item_id"], bench.scores[:, bench.models.index(HELM_MODEL)], strict=False))
    assert got == expected


def test_helm_runs_without_shared_instances_are_an_error(tmp_path):
    runs = tmp_path / "runs"
    _copy_run(runs / "a", HELM_MODEL)
    other = _copy_run(runs / "b", "Other/model-7b")
    instances = _load(other / "instances.json")
    for inst in instances:
        inst["id"] = "other-" + inst["id"]
    _dump(instances, other / "instances.json")
    predictions = _load(other / "display_predictions.json")
    for p in predictions:
        p["instance_id"] = "other-" + p["instance_id"]
    _dump(predictions, other / "display_predictions.json")
    with pytest.raises(DataError, match="no item was scored by every model"):
        import_helm(runs, tmp_path / "out")


def test_helm_metric_choice_and_bad_inputs(tmp_path):
    # exact_match is only aggregated in stats.json, not reported per prediction.
    with pytest.raises(DataError, match=r"metric 'exact_match'.*available: .*quasi_exact_match"):
        import_helm(HELM_RUN, tmp_path / "out", metric="exact_match")
    with pytest.raises(
        DataError, match=r"nothing to import; .*no instances in split .train. \(splits present: test, valid\)"
    ):
        import_helm(HELM_RUN, tmp_path / "out", split="train")
    with pytest.raises(DataError, match=r"no run_spec\.json"):
        import_helm(tmp_path, tmp_path / "out")

    run = _copy_run(tmp_path / "broken", HELM_MODEL)
    (run / "run_spec.json").write_text('{"name": "babi_qa:task=15,', encoding="utf-8")
    with pytest.raises(DataError, match=r"run_spec.json: invalid JSON"):
        import_helm(run, tmp_path / "out")
    _copy_run(tmp_path / "missing", HELM_MODEL)
    (tmp_path / "missing" / "display_predictions.json").unlink()
    with pytest.raises(DataError, match=r"display_predictions.json: file not found"):
        import_helm(tmp_path / "missing", tmp_path / "out")
    predictions = _load(run / "display_predictions.json")
    del predictions[4]["instance_id"]
    _dump(predictions, run / "display_predictions.json")
    shutil.copy(HELM_RUN / "run_spec.json", run / "run_spec.json")
    with pytest.raises(DataError, match=r"prediction #5: missing field 'instance_id'"):
        import_helm(run, tmp_path / "out")


@pytest.mark.parametrize(
    ("name", "task", "model"),
    [
        ("babi_qa:task=15,model=AlephAlpha_luminous-base", "babi_qa:task=15", "AlephAlpha_luminous-base"),
        (
            "mmlu:subject=anatomy,method=multiple_choice_joint,model=openai_gpt2",
            "mmlu:subject=anatomy,method=multiple_choice_joint",
            "openai_gpt2",
        ),
        (
            "boolq:model=a_b,model_deployment=huggingface_a_b,data_augmentation=canonical",
            "boolq:data_augmentation=canonical",
            "a_b",
        ),
        ("imdb", "imdb", None),
    ],
)
def test_helm_task_name_drops_the_model(name, task, model):
    assert split_run_name(name) == (task, model)


# --------------------------------------------------------------------------- long tables


def _long_table() -> pd.DataFrame:
    """2 tasks x 3 questions x 2 models; 'qa' is 0/1, 'summ' is a continuous score."""
    rows = []
    for model, bias in (("m-small", 0.0), ("m-large", 0.3)):
        for i in range(3):
            rows.append(
                {"bench": "qa", "q": f"What is {i} + {i}?", "llm": model, "acc": float((i + bias) > 1)}
            )
            rows.append({"bench": "summ", "q": f"Summarize text {i}.", "llm": model, "acc": 0.2 * i + bias})
    return pd.DataFrame(rows)


def _write(df: pd.DataFrame, path: Path) -> Path:
    name = path.name
    if name.endswith(".parquet"):
        df.to_parquet(path)
    elif name.endswith(".jsonl"):
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_csv(path, sep="\t" if ".tsv" in name else ",", index=False)
    return path


COLUMNS = {"task_col": "bench", "input_col": "q", "model_col": "llm", "score_col": "acc"}


@pytest.mark.parametrize("fname", ["r.csv", "r.tsv", "r.csv.gz", "r.parquet", "r.jsonl"])
def test_table_formats_round_trip(tmp_path, fname):
    df = _long_table()
    summary = import_table(_write(df, tmp_path / fname), tmp_path / "out", **COLUMNS)
    assert (summary["tasks"], summary["items"], summary["models"]) == (2, 6, 2)
    bench = load_benchmark(tmp_path / "out")
    assert bench.tasks == ["qa", "summ"]
    assert sorted(bench.models) == ["m-large", "m-small"]
    assert bench.thresholds == {"qa": None, "summ": 0.5}
    assert bench.task_info.loc["summ", "metric"] == "acc"
    for row in df.itertuples():
        item = bench.items[bench.items["input"] == row.q]
        assert len(item) == 1 and item["task"].iloc[0] == row.bench
        assert _score(bench, row.bench, item["item_id"].iloc[0], row.llm) == pytest.approx(row.acc)


def test_table_item_ids_hash_the_input_and_ignore_row_order(tmp_path):
    df = _long_table()
    import_table(_write(df, tmp_path / "a.csv"), tmp_path / "a", **COLUMNS)
    shuffled = df.sample(frac=1.0, random_state=0)
    import_table(_write(shuffled, tmp_path / "b.csv"), tmp_path / "b", **COLUMNS, threshold=0.25)
    a, b = load_benchmark(tmp_path / "a"), load_benchmark(tmp_path / "b")
    assert a.items.equals(b.items)
    assert b.thresholds == {"qa": 0.25, "summ": 0.25}

    df["qid"] = [f"q{i % 6}" for i in range(len(df))]
    import_table(_write(df, tmp_path / "c.csv"), tmp_path / "c", **COLUMNS, item_col="qid")
    assert set(load_benchmark(tmp_path / "c").items["item_id"]) == {f"q{i}" for i in range(6)}


def test_table_errors_name_file_row_and_column(tmp_path):
    df = _long_table()
    path = _write(df, tmp_path / "r.csv")
    with pytest.raises(
        DataError, match=r"missing column\(s\) 'score'; columns present: 'bench', 'q', 'llm', 'acc'"
    ):
        import_table(path, tmp_path / "out", **{**COLUMNS, "score_col": "score"})

    bad = df.astype({"acc": object})
    bad.loc[3, "acc"] = None
    with pytest.raises(DataError, match=r"r.csv, row 5, column 'acc': score is not a finite number"):
        import_table(_write(bad, path), tmp_path / "out", **COLUMNS)

    dup = pd.concat([df, df.iloc[[1]]], ignore_index=True)
    with pytest.raises(DataError, match=r"row 3: 2 rows repeat a \(task, item, model\); rows 3, 14"):
        import_table(_write(dup, path), tmp_path / "out", **COLUMNS)

    empty = df.copy()
    empty.loc[0, "q"] = " "
    with pytest.raises(DataError, match=r"row 2, column 'q': empty value"):
        import_table(_write(empty, path), tmp_path / "out", **COLUMNS)


def test_build_drops_the_cheapest_models_and_tasks_to_complete_the_matrix():
    rows = [
        (t, str(i), f"{t} question {i}", m, 1.0) for t in ("t1", "t2", "t3") for i in range(4) for m in "AB"
    ]
    rows += [("t1", str(i), f"t1 question {i}", "C", 0.0) for i in range(4)]  # C ran on t1 only
    rows += [("t4", str(i), f"t4 question {i}", "A", 0.0) for i in range(4)]  # only A ran t4
    rows += [("t2", "extra", "t2 extra", "A", 1.0)]  # an item B never saw
    bench = build_benchmark(pd.DataFrame(rows, columns=["task", "item_id", "input", "model", "score"]))
    assert bench.models["model"].tolist() == ["A", "B"]
    assert bench.tasks["task"].tolist() == ["t1", "t2", "t3"]
    assert len(bench.items) == 12 and len(bench.scores) == 24 and bench.items_dropped == 1
    assert bench.skipped == [
        "model C: dropped, no results on task(s) t2, t3, t4",
        "task t4: dropped, no results for model(s) B",
    ]


# --------------------------------------------------------------------------- lm-evaluation-harness


def test_lmeval_fixture_two_models_two_tasks(tmp_path):
    summary = import_lmeval(LMEVAL, tmp_path / "out")
    assert (summary["tasks"], summary["items"], summary["models"]) == (2, 10, 2)
    assert summary["items_dropped"] == 2  # Qwen ran with --limit 6, pythia with --limit 5
    bench = load_benchmark(tmp_path / "out")
    assert bench.tasks == ["arc_easy", "gsm8k"]
    assert sorted(bench.models) == [PYTHIA, QWEN]  # from model_name, and from model_args pretrained=
    assert bench.items.groupby("task")["item_id"].apply(sorted).to_dict() == {
        t: ["0", "1", "2", "3", "4"] for t in ("arc_easy", "gsm8k")
    }
    assert bench.thresholds == {"arc_easy": None, "gsm8k": None}
    assert bench.task_info["metric"].to_dict() == {
        "arc_easy": "acc,none",
        "gsm8k": "exact_match,strict-match",
    }
    arc0 = bench.items[(bench.items["task"] == "arc_easy") & (bench.items["item_id"] == "0")]["input"].iloc[0]
    assert arc0 == "Question: Which of these is a renewable resource?\nAnswer:"
    assert summary["input_mismatches"] == 0  # dict (pythia) and list (Qwen) arguments give the same prompt
    assert _score(bench, "arc_easy", "0", PYTHIA) == 0.0 and _score(bench, "arc_easy", "0", QWEN) == 1.0
    assert _score(bench, "gsm8k", "2", PYTHIA) == 0.0 and _score(bench, "gsm8k", "2", QWEN) == 1.0
    # pythia answered "The answer is 260." without "####":
    # wrong under strict-match, right under flexible-extract
    assert _score(bench, "gsm8k", "3", PYTHIA) == 0.0
    import_lmeval(LMEVAL, tmp_path / "flex", filter="flexible-extract", metric="acc_norm")
    flex = load_benchmark(tmp_path / "flex")
    assert _score(flex, "gsm8k", "3", PYTHIA) == 1.0
    assert flex.task_info["metric"].to_dict() == {
        "arc_easy": "acc_norm,none",
        "gsm8k": "exact_match,flexible-extract",
    }


@pytest.mark.parametrize("options", [{}, {"metric": "acc_norm", "filter": "flexible-extract"}])
@pytest.mark.parametrize("folder", ["EleutherAI__pythia-160m", "Qwen__Qwen2.5-0.5B"])
def test_lmeval_scores_reproduce_the_harness_aggregates(folder, options):
    (results_file,) = (LMEVAL / folder).glob("results_*.json")
    aggregates = _load(results_file)["results"]
    bench = lmeval_to_benchmark(LMEVAL / folder, **options)
    for task, metric in zip(bench.tasks["task"], bench.tasks["metric"], strict=False):
        mean = bench.scores.loc[bench.scores["task"] == task, "score"].mean()
        assert mean == pytest.approx(aggregates[task][metric]), (task, metric)


def test_lmeval_reruns_missing_results_and_bad_lines(tmp_path):
    root = tmp_path / "out"
    shutil.copytree(LMEVAL, root)
    qwen = root / "Qwen__Qwen2.5-0.5B"
    (qwen / "samples_gsm8k_2024-01-01T00-00-00.000001.jsonl").write_text("not json\n", encoding="utf-8")
    for results in qwen.glob("results_*.json"):
        results.unlink()
    bench = lmeval_to_benchmark(root)
    assert sorted(bench.models["model"]) == [PYTHIA, QWEN]  # folder name, "__" -> "/"
    assert len(bench.skipped) == 1 and "older run of task 'gsm8k'" in bench.skipped[0]

    (qwen / "samples_arc_easy_2024-06-02T08-14-07.120394.jsonl").open("a").write('{"doc_id": 9, "acc"\n')
    with pytest.raises(DataError, match=r"samples_arc_easy_.*\.jsonl, row 7: invalid JSON"):
        lmeval_to_benchmark(root)
    with pytest.raises(DataError, match="no task logs the metric 'accuracy'"):
        lmeval_to_benchmark(LMEVAL, metric="accuracy")
    with pytest.raises(DataError, match="no samples_"):
        lmeval_to_benchmark(HELM_RUN)


def test_table_boolean_scores(tmp_path):
    df = pd.DataFrame({"bench": ["t"] * 4, "q": ["a", "b"] * 2, "llm": ["x", "x", "y", "y"]})
    df["acc"] = [True, False, False, True]
    for path in (tmp_path / "r.jsonl", tmp_path / "r.csv"):
        import_table(_write(df, path), tmp_path / "out", **COLUMNS)
        bench = load_benchmark(tmp_path / "out")
        assert bench.thresholds == {"t": None}
        assert sorted(bench.scores.ravel().tolist()) == [0.0, 0.0, 1.0, 1.0]


def test_lmeval_input_falls_back_to_the_document(tmp_path):
    lines = [
        {
            "doc_id": 0,
            "doc": {"q": "2+2?"},
            "arguments": {},
            "filter": "none",
            "metrics": ["acc"],
            "acc": True,
        },
        {
            "doc_id": 1,
            "doc": "plain text doc",
            "arguments": [],
            "filter": "none",
            "metrics": ["acc"],
            "acc": 0,
        },
    ]
    (tmp_path / "org__m").mkdir()
    (tmp_path / "org__m" / "samples_toy.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    bench = lmeval_to_benchmark(tmp_path)
    assert bench.items["input"].tolist() == ['{"q": "2+2?"}', "plain text doc"]
    assert bench.scores["score"].tolist() == [1.0, 0.0]
    assert bench.models["model"].tolist() == ["org/m"]
