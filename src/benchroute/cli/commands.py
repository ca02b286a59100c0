"""The ``benchroute`` command line: a thin shell over data, embed, Router and evaluate.

Every user error (a :class:`BenchrouteError`) becomes one readable line on stderr and exit code 2;
long loops show a Rich progress bar with items/s.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from benchroute.errors import BenchrouteError, ConfigError

app = typer.Typer(
    help="Pick the right LLM for a job by learning from benchmark results.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect benchmark directories.", no_args_is_help=True)
import_app = typer.Typer(
    help="Convert other leaderboards' outputs into the benchmark format.", no_args_is_help=True
)
experiment_app = typer.Typer(help="Run the paper's experiments and write a report.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(import_app, name="import")
app.add_typer(experiment_app, name="experiment")

console = Console()
err_console = Console(stderr=True)

DirArg = Annotated[
    str, typer.Argument(help="Benchmark directory, or a bundled name (openllm_v2, llmrouter, alpacaeval2).")
]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", help="Embedding model: all-mpnet-base-v2 (default), all-MiniLM-L6-v2 or a model dir."
    ),
]
CacheOpt = Annotated[
    Path | None,
    typer.Option("--cache", help="Embedding cache file (default: $BENCHROUTE_CACHE or ~/.cache/benchroute)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
RayOpt = Annotated[
    bool, typer.Option("--ray", help="Run on Ray (pip install 'benchroute\\[ray]'); local unless --address.")
]
AddressOpt = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster to connect to (host:6379 or auto); default: a local Ray."),
]


@contextmanager
def progress_bar(description: str, total: int, unit: str = "items") -> Iterator[Any]:
    """A Rich progress bar with count, rate and ETA; yields ``advance(n)``."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err_console, transient=False) as prog:
        task = prog.add_task(description, total=total, rate="")

        def advance(n: int = 1) -> None:
            prog.advance(task, n)
            speed = prog.tasks[0].speed
            prog.update(task, rate=f"{speed:.1f} {unit}/s" if speed else "")

        yield advance


@contextmanager
def ray_or_local(use_ray: bool, address: str | None = None, needed: bool = True) -> Iterator[None]:
    """A Ray session for the block when ``--ray`` is given and there is work (a spinner while it starts)."""
    if address is not None and not use_ray:
        raise ConfigError("--address is only used with --ray", "add --ray, or leave --address out")
    if not (use_ray and needed):
        yield
        return
    from benchroute.experiments.distributed import ray_session

    with ExitStack() as stack:
        with console.status(f"starting Ray ({address or 'local'})"):
            ray = stack.enter_context(ray_session(address))
        cpus = int(ray.cluster_resources().get("CPU", 0))
        console.print(f"Ray: {cpus} CPUs ({'cluster at ' + address if address else 'local'})")
        yield


def embed_missing(embedder: Any, inputs: list[str], name: str, use_ray: bool = False) -> int:
    """Embed what the cache lacks (on Ray if asked, inside :func:`ray_or_local`); returns the count."""
    todo = len(embedder.missing(inputs))
    if todo:
        with progress_bar(
            f"embedding {name} with {embedder.model}{' on Ray' if use_ray else ''}", todo, "inputs"
        ) as advance:
            if use_ray:
                from benchroute.experiments.distributed import ray_embed

                ray_embed(embedder, inputs, progress=advance)
            else:
                embedder.encode(inputs, progress=advance)
    return todo


def load_with_embeddings(
    path: str,
    model: str = "all-mpnet-base-v2",
    cache: Path | None = None,
    drop_incomplete: bool = False,
    use_ray: bool = False,
) -> Any:
    """The benchmark with embeddings attached; what the cache lacks is embedded under a progress bar."""
    from benchroute.data import load_with_embeddings as load

    return load(
        path,
        model,
        cache,
        drop_incomplete,
        embed_missing=lambda embedder, inputs, name: embed_missing(embedder, inputs, name, use_ray),
    )


# --------------------------------------------------------------------------- data
@data_app.command("info")
def data_info(
    path: DirArg = "openllm_v2",
    as_json: JsonOpt = False,
    drop_incomplete: Annotated[
        bool, typer.Option(help="Drop models missing on some items (reported).")
    ] = False,
) -> None:
    """Tasks, items, models, and the BMA / task-oracle / per-item-oracle accuracy (leave-one-task-out)."""
    from benchroute.data.benchmark import load_benchmark

    bench = load_benchmark(path, drop_incomplete=drop_incomplete)
    info = bench.summary()
    if as_json:
        print(json.dumps(info, indent=2))
        return
    console.print(
        f"[bold]{info['name']}[/]: {info['n_tasks']} tasks, {info['n_items']} items "
        f"(per task min {info['items_per_task']['min']} / median {info['items_per_task']['median']} / "
        f"max {info['items_per_task']['max']}), {info['n_models']} models"
    )
    figs = Table(title="Leave-one-task-out figures (mean over tasks)")
    for col in ("scores", "BMA (LOTO)", "task oracle", "per-item oracle"):
        figs.add_column(col)
    for kind, f in info["figures"].items():
        label = "correctness (0/1)" if kind == "correct" else "raw scores"
        figs.add_row(label, f"{f['bma_loto']:.4f}", f"{f['task_oracle']:.4f}", f"{f['instance_oracle']:.4f}")
    console.print(figs)
    tasks = Table(title="Tasks")
    for col in (
        "task",
        "items",
        "threshold",
        "oracle model",
        "oracle acc",
        "per-item oracle",
        "BMA model",
        "BMA acc",
    ):
        tasks.add_column(col)
    for t in info["tasks"]:
        tasks.add_row(
            t["task"],
            str(t["n_items"]),
            "" if t["threshold"] is None else str(t["threshold"]),
            t["oracle_model"],
            f"{t['oracle_acc']:.3f}",
            f"{t['instance_oracle']:.3f}",
            t["bma_model"],
            f"{t['bma_acc']:.3f}",
        )
    console.print(tasks)
    console.print(
        f"best model on average: [bold]{info['best_model']}[/] (macro accuracy {info['best_model_acc']:.4f})"
    )
    if info.get("dropped_models"):
        console.print(f"dropped incomplete models: {', '.join(info['dropped_models'])}")


# --------------------------------------------------------------------------- embed
@app.command()
def embed(
    path: Annotated[str | None, typer.Argument(help="Benchmark directory or bundled name to embed.")] = None,
    model: ModelOpt = "all-mpnet-base-v2",
    cache: CacheOpt = None,
    export: Annotated[
        Path | None, typer.Option("--export", help="Write the benchmark's vectors to this pack file.")
    ] = None,
    import_: Annotated[
        Path | None, typer.Option("--import", help="Verify a pack and import it into the cache.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.")] = 32,
    commit_every: Annotated[
        int, typer.Option(help="Texts per cache transaction (what a killed run can lose).")
    ] = 256,
    use_ray: RayOpt = False,
    address: AddressOpt = None,
    fast: Annotated[
        str | None,
        typer.Option(
            "--fast",
            help="Opt-in faster embedding path: bf16 (needs a CPU with "
            "native bf16; cached under its own model id).",
        ),
    ] = None,
) -> None:
    """Embed a benchmark's inputs into the persistent cache (resumable; --ray), or import/export packs."""
    from benchroute.data.benchmark import load_benchmark
    from benchroute.embed import Embedder, EmbeddingCache, export_pack, import_pack

    if path is None and import_ is None:
        raise ConfigError("nothing to do", "give a benchmark DIR to embed and/or --import PACK")
    store = EmbeddingCache(cache)
    if import_ is not None:
        n = import_pack(store, import_)
        console.print(f"imported {n} vectors from {import_} into {store.path}")
        if path is None:
            return
    bench = load_benchmark(path)
    embedder = Embedder(model, cache=store, batch_size=batch_size, commit_every=commit_every, fast=fast)
    with ray_or_local(use_ray, address, needed=bool(embedder.missing(bench.inputs))):
        todo = embed_missing(embedder, bench.inputs, bench.name, use_ray)
    console.print(
        f"{bench.name}: {bench.n_items} inputs, {todo} newly embedded with {embedder.model_id}; cache "
        f"{store.path}"
    )
    if export is not None:
        n = export_pack(store, embedder.model_id, bench.inputs, export)
        console.print(f"exported {n} vectors to {export}")


# --------------------------------------------------------------------------- import
OutOpt = Annotated[Path, typer.Option("-o", "--out", help="Output benchmark directory.")]


def _print_import(summary: dict[str, Any]) -> None:
    console.print(", ".join(f"{k}: {v}" for k, v in summary.items()))


@import_app.command("helm")
def import_helm_cmd(
    runs_dir: Annotated[
        Path, typer.Argument(help="A HELM run directory or a folder of them (benchmark_output/runs/...).")
    ],
    out: OutOpt,
    metric: Annotated[
        str | None, typer.Option(help="Per-instance metric (default: the run's main metric).")
    ] = None,
    split: Annotated[str | None, typer.Option(help="Keep only instances of this split (e.g. test).")] = None,
) -> None:
    """Import HELM benchmark_output run directories (one model per run)."""
    from benchroute.data.adapters import import_helm

    _print_import(import_helm(runs_dir, out, split=split, metric=metric))


@import_app.command("table")
def import_table_cmd(
    file: Annotated[Path, typer.Argument(help="A long table: csv, tsv, csv.gz, parquet or jsonl.")],
    out: OutOpt,
    task_col: Annotated[str, typer.Option(help="Column with the task name.")],
    input_col: Annotated[str, typer.Option(help="Column with the input text.")],
    model_col: Annotated[str, typer.Option(help="Column with the model name.")],
    score_col: Annotated[str, typer.Option(help="Column with the score.")],
    item_col: Annotated[
        str | None, typer.Option(help="Column with an item id (default: derived from the input).")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Correct = score > threshold (blank: scores are 0/1).")
    ] = None,
) -> None:
    """Import a long table of per-question results exported by any leaderboard."""
    from benchroute.data.adapters import import_table

    _print_import(
        import_table(
            file,
            out,
            task_col=task_col,
            input_col=input_col,
            model_col=model_col,
            score_col=score_col,
            item_col=item_col,
            threshold=threshold,
        )
    )


@import_app.command("lm-eval")
def import_lmeval_cmd(
    dir: Annotated[
        Path, typer.Argument(help="lm-evaluation-harness --log_samples output (one folder per model).")
    ],
    out: OutOpt,
    metric: Annotated[
        str | None, typer.Option(help="Metric per sample (default: the task's first metric).")
    ] = None,
    filter_: Annotated[
        str | None, typer.Option("--filter", help="Filter to keep (default: the first logged).")
    ] = None,
) -> None:
    """Import lm-evaluation-harness sample logs."""
    from benchroute.data.adapters import import_lmeval

    _print_import(import_lmeval(dir, out, metric=metric, filter=filter_))


# --------------------------------------------------------------------------- fit / recommend / route
def _router_from_options(**params: Any) -> Any:
    from benchroute.router.estimator import Router

    return Router(**{k: v for k, v in params.items() if v is not None})


def _index_params(index: str, pairs: list[str]) -> dict[str, Any] | None:
    """KEY=VALUE options as NeighborIndex parameters (numbers parsed, names checked)."""
    from benchroute.errors import ConfigError
    from benchroute.method.neighbors import BACKENDS, INDEX_PARAMS

    if index not in BACKENDS:
        raise ConfigError(f"unknown index {index!r}", f"use one of {', '.join(BACKENDS)}")
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in INDEX_PARAMS or key == "backend":
            allowed = ", ".join(p for p in INDEX_PARAMS if p != "backend")
            raise ConfigError(f"bad --index-param {pair!r}", f"use KEY=VALUE with KEY one of {allowed}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out or None


@app.command()
def fit(
    path: DirArg,
    out: Annotated[Path, typer.Option("-o", "--out", help="Directory to save the router in.")],
    predictor: Annotated[str, typer.Option(help="knn, mlp or logreg.")] = "knn",
    k: Annotated[int, typer.Option(help="kNN neighbours.")] = 5,
    score: Annotated[str, typer.Option(help="blend (default), or the paper's S1, S2, S3.")] = "blend",
    eta: Annotated[float, typer.Option(help="Trust-rule threshold.")] = 0.6,
    model: ModelOpt = "all-mpnet-base-v2",
    cache: CacheOpt = None,
    drop_incomplete: Annotated[bool, typer.Option(help="Drop models missing on some items.")] = False,
    index: Annotated[
        str,
        typer.Option(
            help="Neighbour index: auto, numpy, faiss-flat, faiss-ivf or faiss-hnsw (docs/scaling.md)."
        ),
    ] = "auto",
    index_param: Annotated[
        list[str] | None,
        typer.Option(help="Index parameter KEY=VALUE, repeatable (e.g. nprobe=32, approx_min=200000)."),
    ] = None,
) -> None:
    """Learn a router from every task of a benchmark and save it."""
    router = _router_from_options(
        predictor=predictor,
        k=k,
        score=score,
        eta=eta,
        embedding_model=model,
        index=index,
        index_params=_index_params(index, index_param or []),
    )
    bench = load_with_embeddings(path, model, cache, drop_incomplete)
    with console.status("fitting predictors and the confidence model"):
        router.fit(bench)
    router.save(out, card_extra={"benchmark": bench.summary()["figures"]})
    console.print(f"saved router ({bench.n_tasks} tasks, {bench.n_models} models) to {out}")


def _read_text(file: Path) -> str:
    from benchroute.errors import DataError

    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError("file not found", file=str(file), hint="check the path") from exc
    except UnicodeDecodeError as exc:
        raise DataError(
            f"not UTF-8 text (byte {exc.start})", file=str(file), hint="save it as UTF-8"
        ) from exc


def _jsonl_records(file: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSONL file with a string "input" field."""
    from benchroute.errors import DataError

    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"invalid JSON ({exc.msg})", file=str(file), row=i, hint="one JSON object per line"
            ) from exc
        if not isinstance(rec, dict) or not isinstance(rec.get("input"), str):
            raise DataError('expected an object with a string "input" field', file=str(file), row=i)
        out.append((i, rec))
    return out


def read_labeled(file: Path) -> list[dict[str, Any]]:
    """Labeled samples of a new task from JSONL: {"input": text, "correct": {model: 0 or 1, ...}} per line."""
    from benchroute.errors import DataError

    if file.suffix.lower() != ".jsonl":
        raise DataError(
            "labeled samples must be a .jsonl file",
            file=str(file),
            hint='one {"input": ..., "correct": {model: 0/1}} object per line',
        )
    records = _jsonl_records(file, _read_text(file))
    for i, rec in records:
        if not isinstance(rec.get("correct"), dict):
            raise DataError(
                'expected a "correct" object mapping every model to 0 or 1', file=str(file), row=i
            )
    if not records:
        raise DataError(
            "no labeled samples in the file", file=str(file), hint="give at least one, or drop --labeled"
        )
    return [rec for _, rec in records]


def read_inputs(file: Path) -> list[str]:
    """Inputs of a new task from .txt (one per line), .jsonl ("input" field) or .csv (input column)."""
    from benchroute.errors import DataError

    text = _read_text(file)
    suffix = file.suffix.lower()
    if suffix == ".jsonl":
        out = [rec["input"] for _, rec in _jsonl_records(file, text)]
    elif suffix == ".csv":
        import io

        import pandas as pd

        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        if "input" not in frame:
            raise DataError(
                f"no 'input' column (columns: {list(frame.columns)})",
                file=str(file),
                hint="name the text column 'input'",
            )
        out = frame["input"].tolist()
    else:
        out = [line for line in text.splitlines() if line.strip()]
    empty = [i for i, x in enumerate(out, 1) if not x.strip()]
    if empty:
        raise DataError("empty input", file=str(file), row=empty[0])
    if not out:
        raise DataError(
            "no inputs in the file", file=str(file), hint="give at least one input of the new task"
        )
    return out


def _split_csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@app.command()
def recommend(
    router_dir: Annotated[Path, typer.Argument(help="A saved router (benchroute fit).")],
    inputs: Annotated[Path, typer.Option("--inputs", help="The new task's inputs: .txt, .jsonl or .csv.")],
    as_json: JsonOpt = False,
    candidates: Annotated[
        str | None, typer.Option(help="Comma-separated subset of models to choose from.")
    ] = None,
    cost_weight: Annotated[
        float, typer.Option(help="Maximize score - w * cost / max cost (0 = accuracy only).")
    ] = 0.0,
    max_cost: Annotated[
        float | None, typer.Option(help="Best model costing at most this (USD/Mtok or B params).")
    ] = None,
    cheapest_within: Annotated[
        float | None, typer.Option(help="Cheapest model within this of the best accuracy.")
    ] = None,
    labeled: Annotated[
        Path | None,
        typer.Option(
            help='A few labeled samples of the task (.jsonl: {"input": ..., "correct": {model: 0/1}} a line).'
        ),
    ] = None,
) -> None:
    """Recommend a model for a new task from a handful of its unlabeled inputs (and maybe a few labeled)."""
    from benchroute.router.estimator import Router

    router = Router.load(router_dir)
    rec = router.recommend(
        read_inputs(inputs),
        labeled=read_labeled(labeled) if labeled else None,
        candidates=_split_csv(candidates),
        cost_weight=cost_weight,
        max_cost=max_cost,
        cheapest_within=cheapest_within,
    )
    if as_json:
        print(json.dumps(rec.to_dict(), indent=2))
        return
    table = Table(title=f"Models ranked by {rec.score} for {rec.n_inputs} inputs")
    unit = "cost $/Mtok" if router.cost_unit_ == "usd_per_mtok" else "cost (B params)"
    frontier = set((rec.extra.get("cost") or {}).get("frontier", []))
    for col in ("rank", "model", "S1", "S2", "S3", "p", "score", "params (B)", unit):
        table.add_column(col, justify="right" if col != "model" else "left")
    for r in rec.ranking:
        style = "bold green" if r.model == rec.chosen else None
        name = r.model + (" *" if r.model in frontier else "")
        table.add_row(
            str(r.rank),
            name,
            f"{r.s1:.3f}",
            f"{r.s2:.3f}",
            f"{r.s3:.3f}",
            f"{r.p:.3f}",
            f"{r.predicted_accuracy:.3f}",
            "" if r.params_b is None else f"{r.params_b:g}",
            "" if r.cost is None else f"{r.cost:g}",
            style=style,
        )
    console.print(table)
    if frontier:
        console.print("* = on the accuracy-cost frontier (no other model is both better and cheaper)")
    console.print(f"chosen: [bold]{rec.chosen}[/] — {rec.reason}")
    if rec.few_shot is not None:
        best = max(rec.few_shot, key=lambda m: rec.few_shot[m])  # type: ignore[index]
        console.print(
            f"{rec.n_labeled} labeled samples: {rec.chosen} got {rec.few_shot[rec.chosen]:.0%} of them "
            f"right (best on them: {best}, {rec.few_shot[best]:.0%})"
        )
    console.print(f"distance u = {rec.distance:.3f}: {rec.closeness}")
    near = ", ".join(f"{t['task']} ({t['share']:.0%})" for t in rec.nearest_tasks)
    console.print(f"nearest benchmark tasks: {near}")


@app.command("suggest-labels")
def suggest_labels_cmd(
    router_dir: Annotated[Path, typer.Argument(help="A saved router (benchroute fit).")],
    inputs: Annotated[Path, typer.Option("--inputs", help="The new task's inputs: .txt, .jsonl or .csv.")],
    budget: Annotated[int, typer.Option(help="How many inputs you can afford to label.")] = 10,
    strategy: Annotated[str, typer.Option(help="uncertainty, diversity, hybrid or random.")] = "uncertainty",
    as_json: JsonOpt = False,
) -> None:
    """Which inputs of a new task to label (every model's correctness) to improve the recommendation most."""
    import numpy as np

    from benchroute.method.suggest import suggest_labels
    from benchroute.router.estimator import Router

    router = Router.load(router_dir)
    texts = read_inputs(inputs)
    X = router.embed(texts)
    g = router.predictor_.predict_proba(X)
    rec = router.recommend(X)
    scores = {r.model: r.predicted_accuracy for r in rec.ranking}
    order = np.array([scores[m] for m in router.models_])
    picks = suggest_labels(X, g, budget, strategy, scores=order, seed=router.seed)
    if as_json:
        print(json.dumps([{"index": i, "input": texts[i]} for i in picks], indent=2))
        return
    for rank, i in enumerate(picks, 1):
        console.print(f"{rank:>3}. [{i}] {texts[i][:100]!r}")


@app.command()
def route(
    router_dir: Annotated[Path, typer.Argument(help="A saved router (benchroute fit).")],
    texts: Annotated[list[str], typer.Argument(help="One or more queries.")],
    as_json: JsonOpt = False,
    candidates: Annotated[
        str | None, typer.Option(help="Comma-separated subset of models to choose from.")
    ] = None,
) -> None:
    """Route single queries: the model most likely to answer each correctly."""
    from dataclasses import asdict

    from benchroute.router.estimator import Router

    router = Router.load(router_dir)
    decisions = router.route(texts, candidates=_split_csv(candidates))
    if as_json:
        print(json.dumps([asdict(d) for d in decisions], indent=2))
        return
    for text, d in zip(texts, decisions, strict=True):
        console.print(f"{d.model}\t{d.probability:.3f}\t{d.reason}\t{text[:60]!r}")


@app.command()
def serve(
    router_dir: Annotated[Path, typer.Argument(help="A saved router (benchroute fit).")],
    config: Annotated[
        Path | None, typer.Option("--config", help="serve.yaml: upstreams, profiles, auth, limits.")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    log_level: Annotated[
        str, typer.Option("--log-level", help="critical, error, warning, info (one line per request), debug.")
    ] = "info",
) -> None:
    """Serve the routing API and an OpenAI-compatible routing proxy (docs/server.md)."""
    from benchroute.server.run import serve as run_server

    levels = ("critical", "error", "warning", "info", "debug")
    if log_level.lower() not in levels:
        raise typer.BadParameter(f"{log_level!r}: use one of {', '.join(levels)}", param_hint="--log-level")
    run_server(router_dir, config, host=host, port=port, log_level=log_level.lower())


# --------------------------------------------------------------------------- experiments
def _experiment(
    kind: str,
    path: str,
    out: Path,
    model: str,
    cache: Path | None,
    k: int,
    repeats: int,
    sweep_repeats: int,
    instance_data: str,
    seed: int,
    mlp_tasks: int = 0,
    use_ray: bool = False,
    address: str | None = None,
    score: str = "blend",
    p_estimator: str = "kernel",
) -> None:
    from benchroute.experiments.evaluate import run_experiments
    from benchroute.experiments.report import write_report
    from benchroute.files import atomic_write_json
    from benchroute.router.estimator import Router

    router = Router(k=k, repeats=repeats, embedding_model=model, seed=seed, score=score)
    with ray_or_local(use_ray, address):
        runner = None
        if use_ray:
            from benchroute.experiments.distributed import RayLOTORunner

            runner = RayLOTORunner()
        bench = load_with_embeddings(path, model, cache, use_ray=use_ray) if kind != "instance" else None
        inst = (
            load_with_embeddings(instance_data, model, cache, use_ray=use_ray)
            if kind in ("instance", "all")
            else None
        )
        results = run_experiments(
            bench if bench is not None else inst,
            kind,
            router,
            sweep_repeats=sweep_repeats,
            instance_benchmark=inst,
            mlp_tasks=mlp_tasks,
            progress=progress_bar,
            runner=runner,
            p_estimator=p_estimator,
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", results)
    paths = write_report(results, out)
    _print_summary(results)
    console.print(f"results: {out / 'results.json'}\nreport:  {paths['md']}\n         {paths['html']}")


def _print_summary(results: dict[str, Any]) -> None:
    summary = results.get("summary")
    if not summary:
        return
    table = Table(title=f"Leave-one-task-out on {results['config']['dataset']} (mean over tasks)")
    cols = ("acc", "ratio", "pearson", "pct_bma", "rank", "p_mae")
    table.add_column("method")
    for c in cols:
        table.add_column(c, justify="right")
    for method, row in summary.items():
        table.add_row(method, *("—" if row.get(c) is None else f"{row[c]:.3f}" for c in cols))
    console.print(table)
    for name, diff in results.get("paired", {}).items():
        if diff.get("n"):
            console.print(
                f"{name}: {diff['mean']:+.4f} ± {diff['se']:.4f} (paired SE over {diff['n']} tasks)"
            )


ExpDir = Annotated[str, typer.Argument(help="Benchmark directory or bundled name.")]
ExpOut = Annotated[Path, typer.Option("--out", help="Output directory for results.json and the report.")]
RepeatsOpt = Annotated[int, typer.Option(help="Random repeats per alpha when training the confidence model.")]
SweepRepeatsOpt = Annotated[int, typer.Option(help="Random repeats per alpha in the OOD-gap sweep.")]
InstanceOpt = Annotated[
    str, typer.Option(help="Benchmark with a continuous metric for per-instance routing.")
]
SeedOpt = Annotated[int, typer.Option(help="Seed of every random draw.")]


def _make_experiment_command(kind: str, doc: str) -> None:
    def command(
        path: ExpDir = "openllm_v2",
        out: ExpOut = Path("out/openllm_v2"),
        model: ModelOpt = "all-mpnet-base-v2",
        cache: CacheOpt = None,
        k: Annotated[int, typer.Option(help="kNN neighbours.")] = 5,
        repeats: RepeatsOpt = 10,
        sweep_repeats: SweepRepeatsOpt = 10,
        instance_data: InstanceOpt = "alpacaeval2",
        seed: SeedOpt = 0,
        mlp_tasks: Annotated[
            int,
            typer.Option(
                help="Also compare the MLP predictor on this many held-out tasks "
                "(about a minute per task on 2 cores; 0 = off)."
            ),
        ] = 0,
        use_ray: RayOpt = False,
        address: AddressOpt = None,
        score: Annotated[
            str, typer.Option(help="The Router's score: blend (default), or the paper's S3 (S1, S2).")
        ] = "blend",
        p_estimator: Annotated[
            str,
            typer.Option(
                help="p for the Router's trust rule: kernel, atc, or the evaluation variants calibrated, "
                "accuracy, "
                "true (oracle)."
            ),
        ] = "kernel",
    ) -> None:
        _experiment(
            kind,
            path,
            out,
            model,
            cache,
            k,
            repeats,
            sweep_repeats,
            instance_data,
            seed,
            mlp_tasks,
            use_ray,
            address,
            score,
            p_estimator,
        )

    command.__doc__ = doc
    experiment_app.command(kind)(command)


for _kind, _doc in (
    ("loto", "Leave-one-task-out with nested confidence training: every method and baseline per task."),
    ("sweep", "LOTO plus the OOD-gap sweep: accuracy vs the share alpha of labeled samples of the new task."),
    (
        "instance",
        "Per-instance routing on a continuous metric (default alpacaeval2), with the sparsity study.",
    ),
    (
        "all",
        "Everything: LOTO, alpha sweep, distance and small-model studies, per-instance routing; one report.",
    ),
):
    _make_experiment_command(_kind, _doc)


def main() -> None:
    """Console-script entry point: user errors exit 2 with one line, never a traceback.

    Usage errors (unknown command or option), --help and Ctrl-C are click's own standalone handling
    (whichever click the installed Typer uses); our errors are caught here.
    """
    try:
        app(standalone_mode=True)
    except BenchrouteError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
