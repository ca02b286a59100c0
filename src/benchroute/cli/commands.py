"""The ``benchroute`` command line: a thin shell over data, embed, Router and evaluate.

Every user error (a :class:`BenchrouteError`) becomes one readable line on stderr and exit code 2;
long loops show a Rich progress bar with items/s.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
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

from benchroute.cli.inputs import read_inputs, read_labeled
from benchroute.errors import BenchrouteError, ConfigError
from benchroute.files import check_output_dir, check_output_file

__all__ = ["app", "main", "read_inputs", "read_labeled"]

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

# --------------------------------------------------------------------------- option checks
# One guard per kind of number: typer parses the text, these callbacks refuse values that parse but
# make no sense (0, negative, NaN, a port above 65535) with one ConfigError naming the option.


def _option_name(param: Any) -> str:
    opts = [o for o in getattr(param, "opts", []) if o.startswith("--")] or list(getattr(param, "opts", []))
    return max(opts, key=len) if opts else str(getattr(param, "name", "option"))


def _checked(test: Callable[[Any], bool], what: str, example: str) -> Callable[..., Any]:
    def callback(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
        if value is None or ctx.resilient_parsing:
            return value
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if not test(v):
                name = _option_name(param)
                raise ConfigError(f"{name} must be {what}, got {v}", f"for example {name} {example}")
        return value

    return callback


def _finite(v: float) -> bool:
    return math.isfinite(v)


positive_int = _checked(lambda v: v >= 1, "a positive integer", "32")
non_negative_int = _checked(lambda v: v >= 0, "0 or a positive integer", "0")
finite_float = _checked(_finite, "a finite number", "0.5")
non_negative_float = _checked(lambda v: _finite(v) and v >= 0, "a finite number >= 0", "0.5")
unit_float = _checked(lambda v: _finite(v) and 0 <= v <= 1, "a number between 0 and 1", "0.6")
port_number = _checked(lambda v: 1 <= v <= 65535, "a TCP port between 1 and 65535", "8000")
seed_number = _checked(lambda v: 0 <= v < 2**32, "an integer between 0 and 2**32 - 1", "0")


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


def print_table(table: Table, names: dict[str, list[str]]) -> None:
    """Print ``table`` without ever cutting a name: the columns in ``names`` (header -> the names it
    shows) keep their full width; the others wrap. If even that is wider than the terminal, the
    table is printed at its natural width and the terminal wraps the lines."""
    from rich.cells import cell_len
    from rich.measure import Measurement

    for column in table.columns:
        shown = names.get(str(column.header))
        if shown:
            column.min_width = max(cell_len(str(n)) for n in shown)
            column.overflow = "fold"
    need = Measurement.get(console, console.options.update(max_width=10**5), table)
    if need.minimum <= console.width:
        console.print(table)
        return
    width = console.width
    console.width = need.maximum
    try:
        console.print(table)
    finally:
        console.width = width


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


EMBED_WINDOW = 4096
PROGRESS_MIN = 256  # fewer inputs embed in a blink: no bar


def embed_inputs(embedder: Any, texts: Sequence[str], what: str = "inputs") -> Any:
    """Embeddings of ``texts`` (n x d float32) through the cache, in windows, under a progress bar.

    Memory stays flat in the number of inputs beyond the result itself: each window's vectors are
    computed, committed to the cache and copied into one preallocated array. The bar counts every
    input (cached ones at once) and shows the rate and an estimate of the time left.
    """
    import numpy as np

    out: Any = None
    bar = (
        progress_bar(f"embedding {what} with {embedder.model}", len(texts), "inputs")
        if len(texts) >= PROGRESS_MIN
        else nullcontext(lambda n=1: None)
    )
    with bar as advance:
        for start in range(0, len(texts), EMBED_WINDOW):
            window = list(texts[start : start + EMBED_WINDOW])
            done = 0

            def step(n: int) -> None:
                nonlocal done
                done += n
                advance(n)

            vecs = embedder.encode(window, progress=step)
            if out is None:
                out = np.empty((len(texts), vecs.shape[1]), dtype=np.float32)
            out[start : start + len(window)] = vecs
            advance(len(window) - done)
    return out


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
        f"[bold]{escape(info['name'])}[/]: {info['n_tasks']} tasks, {info['n_items']} items "
        f"(per task min {info['items_per_task']['min']} / median {info['items_per_task']['median']} / "
        f"max {info['items_per_task']['max']}), {info['n_models']} models"
    )
    figs = Table(title="Leave-one-task-out figures (mean over tasks)")
    for col in ("scores", "BMA (LOTO)", "task oracle", "per-item oracle"):
        figs.add_column(col)
    for kind, f in info["figures"].items():
        label = "correctness (0/1)" if kind == "correct" else "raw scores"
        figs.add_row(label, f"{f['bma_loto']:.4f}", f"{f['task_oracle']:.4f}", f"{f['instance_oracle']:.4f}")
    print_table(figs, {"scores": ["correctness (0/1)"]})
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
    info_tasks = [t["task"] for t in info["tasks"]]
    models = [m["model"] for m in info["models"]]
    for t in info["tasks"]:
        tasks.add_row(
            escape(t["task"]),
            str(t["n_items"]),
            "" if t["threshold"] is None else str(t["threshold"]),
            escape(t["oracle_model"]),
            f"{t['oracle_acc']:.3f}",
            f"{t['instance_oracle']:.3f}",
            escape(t["bma_model"] or ""),
            f"{t['bma_acc']:.3f}",
        )
    print_table(tasks, {"task": info_tasks, "oracle model": models, "BMA model": models})
    console.print(
        f"best model on average: [bold]{escape(info['best_model'])}[/] "
        f"(macro accuracy {info['best_model_acc']:.4f})"
    )
    if info.get("dropped_models"):
        console.print(f"dropped incomplete models: {escape(', '.join(info['dropped_models']))}")


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
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.", callback=positive_int)] = 32,
    commit_every: Annotated[
        int,
        typer.Option(help="Texts per cache transaction (what a killed run can lose).", callback=positive_int),
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
    if export is not None:
        if path is None:
            raise ConfigError("--export needs a benchmark DIR", "give the benchmark whose vectors to export")
        from benchroute.embed import default_cache_path

        check_output_file(export, option="--export", protect=[cache or default_cache_path()])
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
OutOpt = Annotated[
    Path, typer.Option("-o", "--out", help="Output benchmark directory (new, empty, or an earlier import).")
]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Replace a non-empty output folder as a whole (atomically; never one holding the input).",
    ),
]


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
    force: ForceOpt = False,
) -> None:
    """Import HELM benchmark_output run directories (one model per run)."""
    from benchroute.data.adapters import import_helm

    _print_import(import_helm(runs_dir, out, split=split, metric=metric, force=force))


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
        float | None,
        typer.Option(help="Correct = score > threshold (blank: scores are 0/1).", callback=finite_float),
    ] = None,
    sep: Annotated[
        str | None, typer.Option("--sep", help="Column delimiter of a text table (default: by extension).")
    ] = None,
    force: ForceOpt = False,
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
            sep=_separator(sep),
            force=force,
        )
    )


def _separator(sep: str | None) -> str | None:
    if sep is None:
        return None
    sep = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(sep, sep)
    if len(sep) != 1 or sep in '"\r\n':
        raise ConfigError(f"--sep must be one character, got {sep!r}", "for example --sep ';' or --sep '\\t'")
    return sep


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
    force: ForceOpt = False,
) -> None:
    """Import lm-evaluation-harness sample logs."""
    from benchroute.data.adapters import import_lmeval

    _print_import(import_lmeval(dir, out, metric=metric, filter=filter_, force=force))


# --------------------------------------------------------------------------- fit / recommend / route
ROUTER_FILES = ("router.json", "arrays.safetensors", "card.md")


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
    k: Annotated[int, typer.Option(help="kNN neighbours.", callback=positive_int)] = 5,
    score: Annotated[str, typer.Option(help="blend (default), or the paper's S1, S2, S3.")] = "blend",
    eta: Annotated[float, typer.Option(help="Trust-rule threshold.", callback=unit_float)] = 0.6,
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
    check_output_dir(out, option="-o", replaceable=ROUTER_FILES)
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


def _split_csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


CostWeightOpt = Annotated[
    float,
    typer.Option(
        help="Maximize score - w * cost / max cost (0 = accuracy only).", callback=non_negative_float
    ),
]
MaxCostOpt = Annotated[
    float | None,
    typer.Option(help="Best model costing at most this (USD/Mtok or B params).", callback=non_negative_float),
]


@app.command()
def recommend(
    router_dir: Annotated[Path, typer.Argument(help="A saved router (benchroute fit).")],
    inputs: Annotated[Path, typer.Option("--inputs", help="The new task's inputs: .txt, .jsonl or .csv.")],
    as_json: JsonOpt = False,
    candidates: Annotated[
        str | None, typer.Option(help="Comma-separated subset of models to choose from.")
    ] = None,
    cost_weight: CostWeightOpt = 0.0,
    max_cost: MaxCostOpt = None,
    cheapest_within: Annotated[
        float | None,
        typer.Option(help="Cheapest model within this of the best accuracy.", callback=non_negative_float),
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

    texts = read_inputs(inputs)
    samples = read_labeled(labeled) if labeled else None  # checked again below with the router's models
    router = Router.load(router_dir)
    if labeled:
        samples = read_labeled(labeled, router.models_)
    rec = router.recommend(
        embed_inputs(router.embedder, texts),
        labeled=samples,
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
            escape(name),
            f"{r.s1:.3f}",
            f"{r.s2:.3f}",
            f"{r.s3:.3f}",
            f"{r.p:.3f}",
            f"{r.predicted_accuracy:.3f}",
            "" if r.params_b is None else f"{r.params_b:g}",
            "" if r.cost is None else f"{r.cost:g}",
            style=style,
        )
    print_table(table, {"model": [r.model + " *" for r in rec.ranking]})
    if frontier:
        console.print("* = on the accuracy-cost frontier (no other model is both better and cheaper)")
    console.print(f"chosen: [bold]{escape(rec.chosen)}[/] — {escape(rec.reason)}")
    if rec.few_shot is not None:
        best = max(rec.few_shot, key=lambda m: rec.few_shot[m])  # type: ignore[index]
        console.print(
            f"{rec.n_labeled} labeled samples: {escape(rec.chosen)} got {rec.few_shot[rec.chosen]:.0%} of "
            f"them right (best on them: {escape(best)}, {rec.few_shot[best]:.0%})"
        )
    console.print(f"distance u = {rec.distance:.3f}: {rec.closeness}")
    near = ", ".join(f"{t['task']} ({t['share']:.0%})" for t in rec.nearest_tasks)
    console.print(f"nearest benchmark tasks: {escape(near)}")


@app.command("suggest-labels")
def suggest_labels_cmd(
    router_dir: Annotated[Path, typer.Argument(help="A saved router (benchroute fit).")],
    inputs: Annotated[Path, typer.Option("--inputs", help="The new task's inputs: .txt, .jsonl or .csv.")],
    budget: Annotated[
        int, typer.Option(help="How many inputs you can afford to label.", callback=positive_int)
    ] = 10,
    strategy: Annotated[str, typer.Option(help="uncertainty, diversity, hybrid or random.")] = "uncertainty",
    as_json: JsonOpt = False,
) -> None:
    """Which inputs of a new task to label (every model's correctness) to improve the recommendation most."""
    import numpy as np

    from benchroute.method.suggest import suggest_labels
    from benchroute.router.estimator import Router

    texts = read_inputs(inputs)
    router = Router.load(router_dir)
    X = router.embed(embed_inputs(router.embedder, texts))
    g = router.predictor_.predict_proba(X)
    rec = router.recommend(X)
    scores = {r.model: r.predicted_accuracy for r in rec.ranking}
    order = np.array([scores[m] for m in router.models_])
    picks = suggest_labels(X, g, budget, strategy, scores=order, seed=router.seed)
    if as_json:
        print(json.dumps([{"index": i, "input": texts[i]} for i in picks], indent=2))
        return
    for rank, i in enumerate(picks, 1):
        console.print(f"{rank:>3}. \\[{i}] {escape(repr(texts[i][:100]))}", highlight=False)


@app.command()
def route(
    router_dir: Annotated[Path, typer.Argument(help="A saved router (benchroute fit).")],
    texts: Annotated[list[str] | None, typer.Argument(help="One or more queries.")] = None,
    inputs: Annotated[
        Path | None,
        typer.Option("--inputs", help="Route every input of a file instead: .txt, .jsonl or .csv."),
    ] = None,
    as_json: JsonOpt = False,
    candidates: Annotated[
        str | None, typer.Option(help="Comma-separated subset of models to choose from.")
    ] = None,
    rule: Annotated[
        str,
        typer.Option(
            help="Per-query rule: hks (task-aware, the default), knn (the former k=5 argmax), "
            "knn_shrunk, task_vote."
        ),
    ] = "hks",
    cost_weight: CostWeightOpt = 0.0,
    max_cost: MaxCostOpt = None,
    session: Annotated[
        bool,
        typer.Option(
            "--session",
            help="The queries are one stream of one application, in order: each also uses the earlier ones.",
        ),
    ] = False,
) -> None:
    """Route single queries: the model most likely to answer each correctly."""
    from dataclasses import asdict

    from benchroute.router.estimator import Router

    if bool(texts) == (inputs is not None):
        raise ConfigError(
            "give the queries either as arguments or with --inputs FILE, not both"
            if texts
            else "no queries given",
            "benchroute route ROUTER 'a query' ..., or benchroute route ROUTER --inputs FILE",
        )
    queries = list(texts) if texts else read_inputs(inputs)  # type: ignore[arg-type]
    router = Router.load(router_dir)
    options: dict[str, Any] = {
        "candidates": _split_csv(candidates),
        "rule": rule,
        "cost_weight": cost_weight,
        "max_cost": max_cost,
        "session": router.new_session() if session else None,
    }
    batch = embed_inputs(router.embedder, queries) if inputs is not None else queries
    decisions = router.route(batch, **options)
    if as_json:
        print(json.dumps([asdict(d) for d in decisions], indent=2))
        return
    for text, d in zip(queries, decisions, strict=True):
        console.print(
            f"{escape(d.model)}\t{d.probability:.3f}\t{escape(d.reason)}\t{escape(repr(text[:60]))}",
            soft_wrap=True,
            highlight=False,
        )


@app.command()
def serve(
    router_dir: Annotated[Path, typer.Argument(help="A saved router (benchroute fit).")],
    config: Annotated[
        Path | None, typer.Option("--config", help="serve.yaml: upstreams, profiles, auth, limits.")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", callback=port_number)] = 8000,
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

    check_output_dir(out, option="--out")
    router = Router(k=k, repeats=repeats, embedding_model=model, seed=seed, score=score)
    with ray_or_local(use_ray, address):
        runner = None
        if use_ray:
            from benchroute.experiments.distributed import RayLOTORunner

            runner = RayLOTORunner()
        bench = load_with_embeddings(path, model, cache, use_ray=use_ray) if kind != "instance" else None
        inst = (
            load_with_embeddings(instance_data, model, cache, use_ray=use_ray)
            if kind in ("instance", "all", "perquery")
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
    from benchroute.experiments.evaluate import ROWS

    for method in sorted(summary, key=lambda m: list(ROWS).index(m) if m in ROWS else len(ROWS)):
        row = summary[method]
        table.add_row(escape(method), *("—" if row.get(c) is None else f"{row[c]:.3f}" for c in cols))
    print_table(table, {"method": list(summary)})
    for name, diff in results.get("paired", {}).items():
        if diff.get("n"):
            console.print(
                f"{name}: {diff['mean']:+.4f} ± {diff['se']:.4f} (paired SE over {diff['n']} tasks)"
            )


ExpDir = Annotated[str, typer.Argument(help="Benchmark directory or bundled name.")]
ExpOut = Annotated[Path, typer.Option("--out", help="Output directory for results.json and the report.")]
RepeatsOpt = Annotated[
    int,
    typer.Option(help="Random repeats per alpha when training the confidence model.", callback=positive_int),
]
SweepRepeatsOpt = Annotated[
    int, typer.Option(help="Random repeats per alpha in the OOD-gap sweep.", callback=positive_int)
]
InstanceOpt = Annotated[
    str, typer.Option(help="Benchmark with a continuous metric for per-instance routing.")
]
SeedOpt = Annotated[int, typer.Option(help="Seed of every random draw.", callback=seed_number)]


def _make_experiment_command(kind: str, doc: str) -> None:
    def command(
        path: ExpDir = "openllm_v2",
        out: ExpOut = Path("out/openllm_v2"),
        model: ModelOpt = "all-mpnet-base-v2",
        cache: CacheOpt = None,
        k: Annotated[int, typer.Option(help="kNN neighbours.", callback=positive_int)] = 5,
        repeats: RepeatsOpt = 10,
        sweep_repeats: SweepRepeatsOpt = 10,
        instance_data: InstanceOpt = "alpacaeval2",
        seed: SeedOpt = 0,
        mlp_tasks: Annotated[
            int,
            typer.Option(
                help="Also compare the MLP predictor on this many held-out tasks "
                "(about a minute per task on 2 cores; 0 = off).",
                callback=non_negative_int,
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
        "perquery",
        "Per-query routing: LOTO, in-distribution split, per-instance protocol, session replay, calibration, "
        "traffic and the per-query quality-cost curve, every rule through the product's decide_queries.",
    ),
    (
        "all",
        "Everything: LOTO, alpha sweep, distance and small-model studies, per-instance routing; one report.",
    ),
):
    _make_experiment_command(_kind, _doc)


def main() -> None:
    """Console-script entry point: user errors exit 2 with one line, never a traceback.

    Click's usage errors (an unknown command or option, a value that does not parse) are also one
    line here, naming the option; --help, no arguments (the help) and Ctrl-C behave as usual.
    """
    import importlib

    # whichever click Typer uses (its own vendored copy in recent versions, else click itself)
    click_errors = importlib.import_module(typer.BadParameter.__module__)
    try:
        code = app(standalone_mode=False)
    except click_errors.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
            print(exc.ctx.get_help())
            sys.exit(2)
        command = exc.ctx.command_path if exc.ctx is not None else "benchroute"
        _fail(f"{exc.format_message()} (fix: see `{command} --help`)")
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("Aborted!")
        sys.exit(1)
    except click_errors.ClickException as exc:
        _fail(exc.format_message())
    except BenchrouteError as exc:
        _fail(str(exc))
    except OSError as exc:  # backstop: the file boundaries turn these into BenchrouteErrors already
        where = f": {exc.filename}" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where} (fix: check the path, its permissions and the free disk space)")
    if isinstance(code, int) and code:
        sys.exit(code)


def _fail(message: str) -> None:
    """One line on stderr (newlines in a message are flattened), exit code 2."""
    line = " ".join(message.split())
    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
