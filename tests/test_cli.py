"""The command line end to end on a small real benchmark: data info, fit, recommend, route, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from benchroute.cli.commands import app, main
from benchroute.data.benchmark import write_benchmark

runner = CliRunner()


@pytest.fixture(scope="module")
def bench_dir(train_bench, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """The MiniLM test slice of openllm_v2 (its inputs are already in the session's embedding cache)."""
    b = train_bench
    scores = pd.DataFrame(
        [
            (t, i, m, float(b.scores[r, j]))
            for r, (t, i) in enumerate(zip(b.items.task, b.items.item_id, strict=True))
            for j, m in enumerate(b.models)
        ],
        columns=["task", "item_id", "model", "score"],
    )
    return write_benchmark(
        tmp_path_factory.mktemp("bench"), b.items, scores, pd.DataFrame({"model": b.models})
    )


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_fit_recommend_route_round_trip(bench_dir: Path, tmp_path: Path, held_out, train_bench) -> None:  # type: ignore[no-untyped-def]
    info = json.loads(_ok(["data", "info", str(bench_dir), "--json"]))
    assert info["n_tasks"] == train_bench.n_tasks and info["n_models"] == train_bench.n_models
    out = tmp_path / "router"
    _ok(["fit", str(bench_dir), "-o", str(out), "--model", "all-MiniLM-L6-v2"])
    assert sorted(p.name for p in out.iterdir()) == ["arrays.safetensors", "card.md", "router.json"]
    inputs = tmp_path / "new_task.jsonl"
    inputs.write_text("\n".join(json.dumps({"input": x}) for x in held_out[0]))
    rec = json.loads(_ok(["recommend", str(out), "--inputs", str(inputs), "--json"]))
    assert rec["score"] == "blend"  # the CLI fits the default router
    assert rec["chosen"] in train_bench.models and len(rec["ranking"]) == train_bench.n_models
    assert rec["n_inputs"] == len(held_out[0])
    cheap = json.loads(
        _ok(["recommend", str(out), "--inputs", str(inputs), "--json", "--cost-weight", "0.5"])
    )
    assert cheap["extra"]["cost"]["unit"] == "params_b" and cheap["extra"]["cost"]["mode"] == "cost_weight"
    table = _ok(["recommend", str(out), "--inputs", str(inputs)])
    assert "chosen:" in table and "nearest benchmark tasks" in table
    routed = json.loads(_ok(["route", str(out), held_out[0][0], "--json"]))
    assert len(routed) == 1 and routed[0]["model"] in train_bench.models
    assert routed[0]["reason"].startswith("hks:")  # the task-aware rule by default
    stream = json.loads(_ok(["route", str(out), *held_out[0][:3], "--session", "--rule", "knn", "--json"]))
    assert [r["reason"].startswith("knn:") for r in stream] == [True] * 3
    assert "2 earlier queries of the session" in stream[2]["reason"]
    cheap = json.loads(_ok(["route", str(out), held_out[0][0], "--cost-weight", "5", "--json"]))
    assert "cost" in cheap[0]["reason"]
    picks = json.loads(_ok(["suggest-labels", str(out), "--inputs", str(inputs), "--budget", "3", "--json"]))
    assert len({p["index"] for p in picks}) == 3
    # the suggested inputs labeled and passed back: they join the data (few-shot accuracy reported)
    texts, Y = held_out
    labeled = tmp_path / "labeled.jsonl"
    labeled.write_text(
        "\n".join(
            json.dumps(
                {
                    "input": texts[p["index"]],
                    "correct": {m: int(Y[p["index"], j]) for j, m in enumerate(train_bench.models)},
                }
            )
            for p in picks
        )
    )
    rec = json.loads(
        _ok(["recommend", str(out), "--inputs", str(inputs), "--labeled", str(labeled), "--json"])
    )
    assert rec["n_labeled"] == 3
    for j, m in enumerate(train_bench.models):
        assert rec["few_shot"][m] == pytest.approx(Y[[p["index"] for p in picks], j].mean())
    assert "3 labeled samples" in _ok(
        ["recommend", str(out), "--inputs", str(inputs), "--labeled", str(labeled)]
    )


def test_experiment_runs_the_papers_router_on_request(bench_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "s3"
    _ok(
        [
            "experiment",
            "loto",
            str(bench_dir),
            "--model",
            "all-MiniLM-L6-v2",
            "--repeats",
            "2",
            "--score",
            "S3",
            "--out",
            str(out),
        ]
    )
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["router"]["score"] == "S3"
    summary = results["summary"]
    assert summary["Router"]["acc"] == summary["S3_trust"]["acc"] and "Blend" not in summary
    bad = runner.invoke(
        app,
        [
            "experiment",
            "loto",
            str(bench_dir),
            "--model",
            "all-MiniLM-L6-v2",
            "--p-estimator",
            "magic",
            "--out",
            str(tmp_path / "bad"),
        ],
    )
    assert bad.exit_code != 0 and "unknown p_estimator" in str(bad.exception)


def _labeled_error(file: Path) -> str:
    """The DataError message that reading ``file`` as labeled samples raises (it names the file)."""
    from benchroute.cli.commands import read_labeled
    from benchroute.errors import DataError

    with pytest.raises(DataError) as exc:
        read_labeled(file)
    assert str(file) in str(exc.value)
    return str(exc.value)


def test_user_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "q1", "correct": {"m": 1}}\n{"input": "q2", "correct": [1, 0]}\n')
    assert 'row 2: expected a "correct" object' in _labeled_error(bad)
    bad.write_text('{"input": "q1", "correct": {"m": 1}}\n{"input": "q2", "correct": {"m": 1}\n')
    assert "row 2: invalid JSON" in _labeled_error(bad)
    assert "must be a .jsonl file" in _labeled_error(tmp_path / "labels.csv")
    for argv, start in (
        (["data", "info", str(tmp_path / "missing")], "error:"),
        (["recommend", str(tmp_path / "no_router"), "--inputs", str(tmp_path / "x.txt")], "error:"),
        (["no-such-command"], "error:"),  # click's usage errors are one line too
        (["fit", "--no-such-option"], "error:"),
    ):
        monkeypatch.setattr("sys.argv", ["benchroute", *argv])
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(start) and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1


def test_fit_with_a_chosen_index_saves_it_and_routes_the_same(
    bench_dir: Path, tmp_path: Path, held_out
) -> None:  # type: ignore[no-untyped-def]
    from benchroute.router.estimator import Router

    _ok(
        [
            "fit",
            str(bench_dir),
            "-o",
            str(tmp_path / "exact"),
            "--model",
            "all-MiniLM-L6-v2",
            "--index",
            "numpy",
        ]
    )
    _ok(
        [
            "fit",
            str(bench_dir),
            "-o",
            str(tmp_path / "flat"),
            "--model",
            "all-MiniLM-L6-v2",
            "--index",
            "faiss-flat",
            "--index-param",
            "block_rows=4096",
        ]
    )
    flat = Router.load(tmp_path / "flat")
    assert flat.index == "faiss-flat" and flat.index_params == {"block_rows": 4096}
    query = held_out[0][:5]
    exact = [d.model for d in Router.load(tmp_path / "exact").route(query)]
    assert [d.model for d in flat.route(query)] == exact  # both indexes are exact


def test_bad_index_options_are_one_line_errors(
    bench_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for extra, needle in (
        (["--index", "annoy"], "unknown index"),
        (["--index-param", "nprob=3"], "bad --index-param"),
    ):
        monkeypatch.setattr(
            "sys.argv", ["benchroute", "fit", str(bench_dir), "-o", str(tmp_path / "r"), *extra]
        )
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err


def test_embed_fast_path_caches_under_its_own_model_id(tmp_path: Path) -> None:
    from benchroute.embed import EmbeddingCache
    from synthetic import tiny_benchmark

    b = tiny_benchmark(n_groups=2, per_group=2, per_task=5)
    scores = pd.DataFrame(
        [
            (t, i, m, float(b.scores[r, j]))
            for r, (t, i) in enumerate(zip(b.items.task, b.items.item_id, strict=True))
            for j, m in enumerate(b.models)
        ],
        columns=["task", "item_id", "model", "score"],
    )
    path = write_benchmark(tmp_path / "tiny", b.items, scores, pd.DataFrame({"model": b.models}))
    cache = tmp_path / "cache.sqlite"
    _ok(["embed", str(path), "--model", "all-MiniLM-L6-v2", "--cache", str(cache), "--fast", "bf16"])
    models = EmbeddingCache(cache).models()
    assert (
        len(models) == 1 and next(iter(models)).endswith("+bf16") and next(iter(models.values())) == b.n_items
    )
