"""Faults and untrusted artifacts (issue 11, docs/reliability.md): nothing is lost, nothing runs.

* SIGKILL during ``benchroute embed``:
  tests/test_embed.py::test_sigkill_mid_run_resumes_and_matches_uninterrupted.
* Killed while saving a router over an earlier one: a subprocess (this file run as a script) saves
  three different routers in turn into one directory, forever. The test freezes it with SIGSTOP at
  random moments, copies the directory (exactly what a SIGKILL at that instant would leave behind,
  since every write has reached the page cache) and loads the copy; then it SIGKILLs the process for
  real. A copy must load as one of the three clean saves, byte for byte (or the previous one), never
  as anything else (``Router.save`` writes the three files as one directory swap through
  :func:`benchroute.files.atomic_write_dir`).
* Disk full (ENOSPC) in the middle of each file a save writes.
* SIGKILL during ``benchroute experiment loto`` (a tiny real benchmark, real MiniLM embeddings): the
  rerun's results.json equals an uninterrupted run's except the timing fields.
* Untrusted router directories: no pickle anywhere in the code (an AST scan), a saved router is
  three data files, a pickle or a tampered manifest is refused without running anything, and a
  router naming a "model" directory that ships Python code cannot get it imported.
* CLI file arguments are data: ``--inputs ../../etc/passwd`` is read, nothing is written;
  ``fit -o <existing file>`` is a clear error.

Counts go to ``.pytest_cache/d/benchroute-reliability/faults.json``.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "benchroute"
ROUTER_FILES = {"router.json", "arrays.safetensors", "card.md"}
SMALL_MODEL = "all-MiniLM-L6-v2"
VARIANTS = 3
SNAPSHOTS = 100


# ------------------------------------------------------------------------------ synthetic routers


def synthetic_benchmark(seed: int) -> Any:
    """4 tasks x 25 items, 16-d clustered embeddings, 3 models with per-task accuracies."""
    from benchroute.data.benchmark import Benchmark

    rng = np.random.default_rng(seed)
    n_tasks, per, dim, n_models = 4, 25, 16, 3
    centres = rng.normal(size=(n_tasks, dim))
    X = np.concatenate([c + 0.8 * rng.normal(size=(per, dim)) for c in centres]).astype(np.float32)
    task_index = np.repeat(np.arange(n_tasks), per)
    Y = (rng.random((len(X), n_models)) < rng.uniform(0.2, 0.8, (n_tasks, n_models))[task_index]).astype(
        float
    )
    tasks, models = [f"t{d}" for d in range(n_tasks)], [f"m{j}" for j in range(n_models)]
    items = pd.DataFrame(
        {
            "task": [tasks[d] for d in task_index],
            "item_id": [str(i) for i in range(len(X))],
            "input": [f"question {i}" for i in range(len(X))],
        }
    )
    info = pd.DataFrame({"params_b": [7.0, 13.0, 70.0]}, index=pd.Index(models, name="model"))
    return Benchmark(
        f"synthetic{seed}",
        tasks,
        items,
        models,
        info,
        Y,
        dict.fromkeys(tasks),
        pd.DataFrame(index=pd.Index(tasks, name="task")),
        None,
        None,
        X,
    )


def synthetic_router(seed: int) -> Any:
    from benchroute.router.estimator import Router

    return Router(score="S3", repeats=2, alphas=(0.0, 0.1), embedding_model=SMALL_MODEL).fit(
        synthetic_benchmark(seed)
    )


SAVERS: dict[str, Callable[..., None]] = {
    "Router.save": lambda r, p, **kw: r.save(p, **kw),
}


def _saver_main(mode: str, out: Path, refs: Path) -> None:
    """Subprocess: write the clean reference saves, then save the variants into ``out`` forever."""
    save = SAVERS[mode]
    routers = [synthetic_router(v) for v in range(VARIANTS)]
    for v, router in enumerate(routers):
        router.save(refs / f"v{v}", card_extra={"variant": v})
    save(routers[0], out, card_extra={"variant": 0})
    print("READY", flush=True)
    i = 1
    while True:
        save(routers[i % VARIANTS], out, card_extra={"variant": i % VARIANTS})
        i += 1


# ---------------------------------------------------------------------------------------- ledger


LEDGER = "faults"  # the conftest ledger fixture saves counts under this name

# ---------------------------------------------------------------------------- killed while saving


def classify(directory: Path, refs: Path) -> str:
    """What a router directory left by a crash is: a clean save (which?), refused, or corrupt."""
    from benchroute.errors import IntegrityError
    from benchroute.router.estimator import Router

    try:
        Router.load(directory)
    except IntegrityError:
        return "refused: previous router lost"
    variant = json.loads((directory / "router.json").read_text())["payload"]["card_extra"]["variant"]
    ref = refs / f"v{variant}"
    if any(
        (directory / f).read_bytes() != (ref / f).read_bytes() for f in ("router.json", "arrays.safetensors")
    ):
        return "CORRUPT LOAD"
    if (directory / "card.md").read_bytes() != (ref / "card.md").read_bytes():
        return "loaded, card.md of another save"
    return "loaded a complete save"


def _wait_stopped(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                return
        time.sleep(0.0005)
    raise AssertionError("the saver did not stop")


@pytest.fixture(scope="module")
def kill_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Per save mode: outcome counts of SNAPSHOTS frozen snapshots and of one real SIGKILL, and a rerun."""
    from benchroute.router.estimator import Router

    runs: dict[str, dict[str, Any]] = {}
    for seed, mode in enumerate(SAVERS):
        tmp = tmp_path_factory.mktemp("kill")
        out_parent, refs = tmp / "runs", tmp / "refs"
        out_parent.mkdir()
        out = out_parent / "router"
        log = tmp / "saver.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, __file__, "saver", mode, str(out), str(refs)],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "READY":
            proc.kill()
            proc.wait()
            raise AssertionError(f"saver failed: {line}{log.read_text()}")
        rng = random.Random(seed)
        snapshots: Counter = Counter()
        try:
            for k in range(SNAPSHOTS):
                time.sleep(rng.uniform(0, 0.02))
                os.kill(proc.pid, signal.SIGSTOP)
                try:
                    _wait_stopped(proc.pid)
                    snap = tmp / f"snap{k}"
                    shutil.copytree(out, snap)
                finally:
                    os.kill(proc.pid, signal.SIGCONT)
                snapshots[classify(snap, refs)] += 1
                shutil.rmtree(snap)
            time.sleep(rng.uniform(0, 0.02))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        killed = classify(out, refs)
        leftovers = sorted({p.name for p in out.iterdir()} - ROUTER_FILES) + sorted(
            p.name for p in out_parent.iterdir() if p.name != "router"
        )
        # rerun: save again into the directory the killed process left, then load it
        SAVERS[mode](Router.load(refs / "v1"), out, card_extra={"variant": 1})
        rerun = classify(out, refs)
        runs[mode] = {"snapshots": snapshots, "sigkill": killed, "rerun": rerun, "leftovers": leftovers}
    return runs


def _record_kills(ledger: dict[str, Counter], mode: str, run: dict[str, Any]) -> None:
    c = ledger.setdefault(f"SIGKILL/SIGSTOP during fit+save ({mode})", Counter())
    c["cases"] = sum(run["snapshots"].values()) + 1
    for k, v in run["snapshots"].items():
        c[k] += v
    c[run["sigkill"]] += 1


@pytest.mark.parametrize("mode", list(SAVERS))
def test_killed_save_never_loads_a_corrupt_router(
    kill_runs: dict[str, dict[str, Any]], mode: str, ledger: dict[str, Counter]
) -> None:
    run = kill_runs[mode]
    _record_kills(ledger, mode, run)
    assert sum(run["snapshots"].values()) == SNAPSHOTS
    assert run["snapshots"]["CORRUPT LOAD"] == 0 and run["sigkill"] != "CORRUPT LOAD"
    assert run["snapshots"]["loaded a complete save"] > 0
    assert run["rerun"] == "loaded a complete save", "saving again after a kill must work"


def test_router_save_always_leaves_a_complete_router(kill_runs: dict[str, dict[str, Any]]) -> None:
    run = kill_runs["Router.save"]
    assert set(run["snapshots"]) == {"loaded a complete save"}, run["snapshots"]
    assert run["sigkill"] == "loaded a complete save"


# ------------------------------------------------------------------------------------ disk full


class _DiskFull:
    """``os.fdopen`` whose ``fail_at``-th file accepts half of its bytes, then raises ENOSPC."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at = fail_at
        self.opened = 0
        self.real = os.fdopen

    def __call__(self, fd: int, *args: Any, **kwargs: Any) -> Any:
        f = self.real(fd, *args, **kwargs)
        self.opened += 1
        if self.opened != self.fail_at:
            return f
        real_write = f.write

        def write(data: bytes) -> int:
            real_write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        f.write = write
        return f


def _disk_full_case(tmp_path: Path, mode: str, fail_at: int, ledger: dict[str, Counter]) -> None:
    from benchroute.errors import ConfigError
    from benchroute.router.estimator import Router

    old, new = synthetic_router(0), synthetic_router(1)
    target = tmp_path / "routers" / "r"
    SAVERS[mode](old, target, card_extra={"variant": 0})
    before = {f: (target / f).read_bytes() for f in ROUTER_FILES}
    full = _DiskFull(fail_at)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fdopen", full)
        with pytest.raises(ConfigError, match="No space left on device") as info:
            SAVERS[mode](new, target, card_extra={"variant": 1})
    c = ledger.setdefault(f"disk full (ENOSPC) during save ({mode})", Counter())
    c["cases"] += 1
    assert str(target) in str(info.value) and full.opened == fail_at
    assert sorted(p.name for p in target.parent.iterdir()) == ["r"], "a temporary directory was left behind"
    assert {p.name for p in target.iterdir()} == ROUTER_FILES, "a temporary file was left behind"
    intact = {f: (target / f).read_bytes() for f in ROUTER_FILES} == before
    c["previous router intact" if intact else "previous router lost"] += 1
    assert intact, f"ENOSPC in file {fail_at} of the save changed the previous router"
    loaded = Router.load(target)
    np.testing.assert_array_equal(loaded.X_, old.X_)
    assert loaded.models_ == old.models_


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_disk_full_router_save_keeps_previous_router(
    tmp_path: Path, fail_at: int, ledger: dict[str, Counter]
) -> None:
    _disk_full_case(tmp_path, "Router.save", fail_at, ledger)


def test_atomic_write_dir_refuses_to_replace_foreign_files(tmp_path: Path) -> None:
    from benchroute.errors import ConfigError
    from benchroute.files import atomic_write_dir

    (tmp_path / "file").write_text("keep me")
    with pytest.raises(ConfigError, match="not a directory"):
        atomic_write_dir(tmp_path / "file", {"a": b"1"})
    assert (tmp_path / "file").read_text() == "keep me"
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="holds other files"):
        atomic_write_dir(tmp_path / "home", {"a": b"1"})
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["notes.txt"]
    atomic_write_dir(tmp_path / "new" / "deep", {"a": b"1", "b": b"2"})
    atomic_write_dir(tmp_path / "new" / "deep", {"a": b"3", "b": b"4"})
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["deep"]
    assert (tmp_path / "new" / "deep" / "a").read_bytes() == b"3"


# ------------------------------------------------------------------------- killed experiments


TINY_TASKS = ("arc_challenge", "gsm8k", "mmlu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """3 tasks x 20 items x 4 models of bundled llmrouter, embedded with MiniLM into a tmp cache."""
    from benchroute.data.benchmark import load_benchmark, write_benchmark
    from benchroute.embed import Embedder

    root = tmp_path_factory.mktemp("tiny")
    bench = load_benchmark("llmrouter")
    items, scores = [], []
    for task in TINY_TASKS:
        s = bench.task_slice(task)
        for r in range(s.start, s.start + 20):
            item_id, text = bench.items["item_id"].iloc[r], bench.items["input"].iloc[r]
            items.append({"task": task, "item_id": item_id, "input": text})
            scores += [
                {"task": task, "item_id": item_id, "model": m, "score": float(bench.scores[r, j])}
                for j, m in enumerate(bench.models[:4])
            ]
    directory = write_benchmark(root / "bench", pd.DataFrame(items), pd.DataFrame(scores))
    cache = root / "embeddings.sqlite"
    Embedder(SMALL_MODEL, cache=cache).encode(load_benchmark(directory).inputs)
    return {"bench": directory, "cache": cache, "root": root}


def _experiment(tiny: dict[str, Path], out: Path, cache: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "BENCHROUTE_CACHE": str(cache)}
    cmd = [
        sys.executable,
        "-m",
        "benchroute.cli.commands",
        "experiment",
        "loto",
        str(tiny["bench"]),
        "--model",
        SMALL_MODEL,
        "--out",
        str(out),
        "--repeats",
        "2",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _results(path: Path) -> dict[str, Any]:
    """results.json without its timing fields (it must be strict JSON: no NaN)."""
    doc = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    for field in ("started", "seconds"):
        doc["config"].pop(field)
    return doc


def test_killed_experiment_reruns_to_the_uninterrupted_result(
    tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch, ledger: dict[str, Counter]
) -> None:
    """Kill ``benchroute experiment loto`` twice (at a random moment, then while it writes the report)
    and rerun it: results.json equals an uninterrupted run's (the clean run and the rerun go through
    the real entry point in-process, the killed ones are real subprocesses)."""
    clean_cache, cache = tiny["root"] / "clean.sqlite", tiny["root"] / "killed.sqlite"
    shutil.copy(tiny["cache"], clean_cache)
    shutil.copy(tiny["cache"], cache)
    clean_out, out = tiny["root"] / "clean", tiny["root"] / "out"
    args = ["experiment", "loto", str(tiny["bench"]), "--model", SMALL_MODEL, "--repeats", "2"]
    monkeypatch.setenv("BENCHROUTE_CACHE", str(clean_cache))
    assert _cli(monkeypatch, *args, "--out", str(clean_out)) == 0
    reference = _results(clean_out / "results.json")
    c = ledger.setdefault("SIGKILL during experiment loto", Counter())

    def check_partial() -> None:
        c["cases"] += 1
        if (out / "results.json").exists():  # written atomically: complete and right, or absent
            assert _results(out / "results.json") == reference
            c["killed after results.json: complete"] += 1
        else:
            c["killed before results.json: absent"] += 1

    # 1) at a random moment (derandomized): imports, loading, the LOTO runs or the report
    proc = _experiment(tiny, out, cache)
    time.sleep(random.Random(11).uniform(0.3, 2.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    check_partial()
    # 2) right after results.json appears: while the figures and report are being written
    proc = _experiment(tiny, out, cache)
    deadline = time.monotonic() + 120
    while not (out / "results.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    check_partial()
    # 3) the rerun completes and matches
    monkeypatch.setenv("BENCHROUTE_CACHE", str(cache))
    assert _cli(monkeypatch, *args, "--out", str(out)) == 0
    assert _results(out / "results.json") == reference
    assert (out / "report.md").read_text() and (out / "report.html").read_text()
    c["rerun equals uninterrupted run"] += 1


# ------------------------------------------------------------------------------- no pickle


UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _unsafe_calls(tree: ast.AST) -> list[str]:
    """Deserialisers that can run code, and eval/exec, found in a module's syntax tree."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            )
            found += [f"import {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
        owner = fn.value.id if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name) else ""
        kw = {k.arg: k.value for k in node.keywords}
        if isinstance(fn, ast.Name) and name in ("eval", "exec", "__import__"):
            found.append(f"{name}()")
        elif (
            owner in ("torch",)
            and name == "load"
            and not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True)
        ):
            found.append("torch.load without weights_only=True")
        elif (
            owner in ("np", "numpy")
            and name == "load"
            and isinstance(kw.get("allow_pickle"), ast.Constant)
            and kw["allow_pickle"].value is True
        ):
            found.append("np.load(allow_pickle=True)")
        elif name in ("read_pickle", "to_pickle", "unsafe_load", "full_load") or (
            owner == "yaml" and name == "load"
        ):
            found.append(f"{owner}.{name}()")
    return found


def test_no_pickle_or_code_loading_in_the_package(ledger: dict[str, Counter]) -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 10
    bad = {str(f.relative_to(SRC)): hits for f in files if (hits := _unsafe_calls(ast.parse(f.read_text())))}
    c = ledger.setdefault("no pickle: source files scanned", Counter())
    c["cases"] = len(files)
    c["unsafe deserialisation/eval found"] = len(bad)
    assert bad == {}
    # the scanner itself finds what it is meant to find
    sample = (
        "import pickle\nimport joblib\nx = torch.load(f)\ny = np.load(f, allow_pickle=True)\n"
        "z = yaml.load(s)\neval(s)\nok = torch.load(f, weights_only=True)\nyaml.safe_load(s)\nnet.eval()\n"
    )
    assert len(_unsafe_calls(ast.parse(sample))) == 6


def test_saved_router_is_three_data_files(tmp_path: Path) -> None:
    router = synthetic_router(0)
    directory = router.save(tmp_path / "r")
    assert {p.name for p in directory.iterdir()} == ROUTER_FILES
    raw = (directory / "arrays.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes <= {"F32", "F64", "U8", "I32", "I64", "F16"}, dtypes
    assert 8 + n + sum(
        int(np.prod(v["shape"])) * {"F32": 4, "F64": 8, "U8": 1, "I32": 4, "I64": 8, "F16": 2}[v["dtype"]]
        for k, v in header.items()
        if k != "__metadata__"
    ) == len(raw)
    json.loads(
        (directory / "router.json").read_text(),
        parse_constant=lambda c: pytest.fail(f"NaN in router.json: {c}"),
    )
    assert b"\x80\x04\x95" not in raw and b"\x80\x05\x95" not in raw  # no pickle protocol 4/5 frame


# --------------------------------------------------------------------- untrusted router dirs


class _Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _resign(directory: Path, payload: dict[str, Any], arrays: bytes | None = None) -> None:
    """Rewrite router.json with valid checksums, as an attacker who edits a router can."""
    if arrays is not None:
        (directory / "arrays.safetensors").write_bytes(arrays)
        payload = {**payload, "arrays_sha256": hashlib.sha256(arrays).hexdigest()}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    (directory / "router.json").write_text(json.dumps({"payload": payload, "sha256": digest}))


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return synthetic_router(0).save(tmp_path / "router")


def _manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "router.json").read_text())["payload"]


def test_pickle_in_place_of_arrays_is_refused_and_never_run(saved: Path, tmp_path: Path) -> None:
    from benchroute.errors import IntegrityError
    from benchroute.router.estimator import Router

    marker = tmp_path / "PWNED"
    evil = pickle.dumps(_Payload(marker))
    assert not marker.exists()
    (saved / "arrays.safetensors").write_bytes(evil)
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        Router.load(saved)
    # router.json itself replaced by a pickle
    (saved / "router.json").write_bytes(evil)
    with pytest.raises(IntegrityError, match="not a valid router manifest"):
        Router.load(saved)
    assert not marker.exists()


def test_resigned_pickle_arrays_never_run(saved: Path, tmp_path: Path) -> None:
    from benchroute.errors import IntegrityError
    from benchroute.router.estimator import Router

    marker = tmp_path / "PWNED"
    _resign(saved, _manifest(saved), pickle.dumps(_Payload(marker)))
    with pytest.raises(IntegrityError):
        Router.load(saved)
    assert not marker.exists()


def test_resigned_pickle_arrays_are_an_integrity_error(saved: Path, tmp_path: Path) -> None:
    from benchroute.errors import IntegrityError
    from benchroute.router.estimator import Router

    _resign(saved, _manifest(saved), pickle.dumps(_Payload(tmp_path / "PWNED")))
    with pytest.raises(IntegrityError):
        Router.load(saved)


JUNK = [
    None,
    True,
    -1,
    0,
    10**30,
    1e308,
    "",
    "x",
    "../../etc/passwd",
    [],
    {},
    [1, "a"],
    {"__class__": "os.system"},
]


def _mutations(
    payload: dict[str, Any], arrays: bytes, rng: random.Random, n: int
) -> Iterator[tuple[str, dict, bytes]]:
    """Re-signable edits of a router manifest/arrays: unknown keys, missing keys, wrong types and shapes."""
    from safetensors.numpy import load, save

    tensors = load(arrays)
    for _ in range(n):
        p = json.loads(json.dumps(payload))
        kind = rng.choice(
            [
                "unknown key",
                "unknown param",
                "missing key",
                "missing param",
                "wrong type",
                "wrong param type",
                "short list",
                "array shape/dtype",
            ]
        )
        blob = arrays
        if kind == "unknown key":
            p[rng.choice(["__reduce__", "exec", "callback", "x"])] = rng.choice(JUNK)
        elif kind == "unknown param":
            p["params"][rng.choice(["__init__", "metric", "n_jobs", "x"])] = rng.choice(JUNK)
        elif kind == "missing key":
            del p[rng.choice(sorted(k for k in p if k not in ("format", "format_version", "arrays_sha256")))]
        elif kind == "missing param":
            del p["params"][rng.choice(sorted(p["params"]))]
        elif kind == "wrong type":
            key = rng.choice(sorted(k for k in p if k not in ("format", "format_version", "arrays_sha256")))
            p[key] = rng.choice([j for j in JUNK if type(j) is not type(p[key])])
        elif kind == "wrong param type":
            key = rng.choice(sorted(p["params"]))
            p["params"][key] = rng.choice([j for j in JUNK if type(j) is not type(p["params"][key])])
        elif kind == "short list":
            key = rng.choice(["models", "tasks"])
            p[key] = p[key][:-1]
        else:
            name = rng.choice(sorted(tensors))
            t = dict(tensors)
            t[name] = rng.choice(
                [
                    np.zeros(3, np.float32),
                    np.zeros((2, 2, 2), np.float64),
                    t[name][:1],
                    np.full(t[name].shape, 7, np.int64),
                    np.zeros((0,), np.uint8),
                ]
            )
            blob = save(t)
        yield kind, p, blob


@pytest.fixture(scope="module")
def manifest_fuzz(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Load 120 re-signed tampered copies of a saved router; outcome per case, nothing else."""
    from benchroute.errors import BenchrouteError, IntegrityError
    from benchroute.router.estimator import Router

    tmp = tmp_path_factory.mktemp("fuzz")
    original = synthetic_router(0).save(tmp / "original")
    payload, arrays = _manifest(original), (original / "arrays.safetensors").read_bytes()
    query = synthetic_benchmark(0).embeddings[:3]
    outcomes: Counter = Counter()
    by_kind: Counter = Counter()
    examples: dict[str, str] = {}
    for i, (kind, p, blob) in enumerate(_mutations(payload, arrays, random.Random(5), 120)):
        d = tmp / f"c{i}"
        shutil.copytree(original, d)
        _resign(d, p, blob)
        try:
            router = Router.load(d)
            router.recommend(query)  # a router that loads must also work
            router.route(query)
            result = "loaded and works"
        except IntegrityError:
            result = "IntegrityError"
        except BenchrouteError as exc:
            result = type(exc).__name__
        except Exception as exc:
            result = f"unhandled {type(exc).__name__}"
            examples.setdefault(result, f"{kind}: {exc}"[:200])
        outcomes[result] += 1
        by_kind[(kind, result)] += 1
        shutil.rmtree(d)
    return {"outcomes": outcomes, "by_kind": by_kind, "examples": examples}


def test_tampered_manifests_never_run_code(manifest_fuzz: dict[str, Any], ledger: dict[str, Counter]) -> None:
    c = ledger.setdefault("re-signed tampered router.json/arrays", Counter())
    c["cases"] = sum(manifest_fuzz["outcomes"].values())
    c.update(manifest_fuzz["outcomes"])
    assert c["cases"] == 120
    assert manifest_fuzz["outcomes"]["IntegrityError"] + manifest_fuzz["outcomes"]["loaded and works"] > 0


def test_tampered_manifests_are_integrity_errors(manifest_fuzz: dict[str, Any]) -> None:
    unhandled = {k: v for k, v in manifest_fuzz["outcomes"].items() if k.startswith("unhandled")}
    assert unhandled == {}, manifest_fuzz["examples"]
    # an unknown key is refused too: the manifest's schema is fixed by its format version
    accepted = {
        k: v
        for k, v in manifest_fuzz["by_kind"].items()
        if k[0].startswith("unknown") and k[1] != "IntegrityError"
    }
    assert accepted == {}


def test_untrusted_router_cannot_load_code_through_its_embedding_model(
    saved: Path, tmp_path: Path, ledger: dict[str, Counter]
) -> None:
    """router.json names the embedding model, so a tampered router can point at any directory: one
    whose modules.json asks for a module shipped next to it must fail cleanly, without importing it."""
    from benchroute.errors import ModelNotAvailableError
    from benchroute.router.estimator import Router

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil-model"
    evil.mkdir()
    (evil / "modules.json").write_text(
        json.dumps([{"idx": 0, "name": "0", "path": "", "type": "evil_module.Evil"}])
    )
    (evil / "evil_module.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Evil: ...\n")
    (evil / "config.json").write_text("{}")
    payload = _manifest(saved)
    c = ledger.setdefault("untrusted router naming a code-carrying model dir", Counter())
    for model_dir in (evil, tmp_path):  # the code-carrying directory, and one that is no model at all
        payload["params"]["embedding_model"] = str(model_dir)
        _resign(saved, payload)
        router = Router.load(saved)
        with pytest.raises(ModelNotAvailableError, match="cannot load embedding model"):
            router.recommend(["What is 2 plus 2?"])
        c["cases"] += 1
        c["ModelNotAvailableError, nothing imported"] += int(not marker.exists())
    assert not marker.exists()


# ------------------------------------------------------------------------ CLI file arguments


def _cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """Run ``benchroute ARGS`` in-process through its real entry point; returns the exit code."""
    from benchroute.cli.commands import main

    monkeypatch.setattr(sys, "argv", ["benchroute", *args])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def tiny_router(tiny: dict[str, Path]) -> Path:
    from benchroute.data.benchmark import load_benchmark
    from benchroute.embed import Embedder
    from benchroute.router.estimator import Router

    bench = load_benchmark(tiny["bench"])
    bench = bench.with_embeddings(Embedder(SMALL_MODEL, cache=tiny["cache"]).encode(bench.inputs))
    return Router(score="S3", repeats=2, embedding_model=SMALL_MODEL).fit(bench).save(tiny["root"] / "router")


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_inputs_path_traversal_is_read_as_data(
    tiny: dict[str, Path],
    tiny_router: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    ledger: dict[str, Counter],
) -> None:
    passwd = Path("/etc/passwd")
    if not passwd.is_file():
        pytest.skip("no /etc/passwd")
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("BENCHROUTE_CACHE", str(tmp_path / "cache" / "e.sqlite"))
    traversal = "../" * (len(cwd.parts) - 1) + "etc/passwd"
    watched = {p: _tree(p) for p in (tiny_router, tiny["bench"])}
    etc_before = passwd.stat().st_mtime_ns
    code = _cli(monkeypatch, "recommend", str(tiny_router), "--inputs", traversal, "--json")
    out = capsys.readouterr().out
    assert code == 0
    rec = json.loads(out)
    lines = [ln for ln in passwd.read_text().splitlines() if ln.strip()]
    assert rec["n_inputs"] == len(lines)  # the file's lines became inputs: data, nothing else
    assert passwd.stat().st_mtime_ns == etc_before
    assert {p: _tree(p) for p in watched} == watched
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(
        p.parent == tmp_path / "cache" and p.name.startswith("e.sqlite") for p in written
    ), written  # the only write: query vectors into the embedding cache the user chose
    ledger.setdefault("CLI file arguments", Counter())["cases"] += 1


def test_fit_out_to_an_existing_file_is_a_clear_error_and_never_touches_it(
    tiny: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    ledger: dict[str, Counter],
) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("do not overwrite")
    code = _cli(
        monkeypatch,
        "fit",
        str(tiny["bench"]),
        "-o",
        str(target),
        "--model",
        SMALL_MODEL,
        "--cache",
        str(tiny["cache"]),
    )
    assert code == 2 and "not a directory" in capsys.readouterr().err
    assert target.read_text() == "do not overwrite"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]
    ledger.setdefault("CLI file arguments", Counter())["cases"] += 1


if __name__ == "__main__":
    if sys.argv[1] == "saver":
        _saver_main(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
