"""Scale-out on Ray: embedding with Ray Data, and the leave-one-task-out folds as Ray tasks.

Ray is optional (``pip install 'benchroute[ray]'``) and imported only here, only when asked for, so
the core package never needs it. Both paths give the same numbers as one process:

* Embedding: the driver finds the texts the cache lacks, cuts them into the same longest-first
  chunks as :class:`~benchroute.embed.Embedder` (so each forward pass pads the same texts together),
  and Ray Data maps the chunks over actors that each hold one copy of the model. Only the driver
  writes to the SQLite cache (one writer), one transaction per chunk as results arrive, so a run
  killed at any moment resumes where it stopped.
* LOTO: the fold engine's neighbour lists and the nested confidence pairs come from one pass over
  all tasks, made on the driver. The evaluator holding them (and the embeddings) is put in the
  object store once; each held-out task, with all its alphas and repeats, is one Ray task that
  reads those arrays zero-copy and runs the same code as the serial loop.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from benchroute.embed import Embedder
from benchroute.errors import BenchrouteError, ConfigError, IntegrityError

RAY_HINT = "pip install 'benchroute[ray]'"
MIB = 1 << 20

Progress = Callable[[int], None]


def import_ray() -> Any:
    """The ``ray`` module, or one clear error saying how to install it."""
    try:
        import ray
    except ImportError as exc:  # also raised when ray is blocked (sys.modules["ray"] = None)
        raise ConfigError("Ray is not installed (needed for --ray)", RAY_HINT) from exc
    return ray


def local_object_store_bytes() -> int:
    """A quarter of the RAM, within [512 MiB, 8 GiB]: the shared LOTO state of openllm_v2 is 216 MB.

    It is a cap, not an allocation; Ray spills objects to disk beyond it instead of failing.
    """
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(min(max(total // 4, 512 * MIB), 8192 * MIB))


def _quiet(ray: Any) -> None:
    """No Ray Data progress lines or per-dataset INFO logs: the CLI shows its own Rich bars."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"


def _check_reachable(address: str) -> None:
    """Fail fast on a host:port nobody listens on (Ray itself waits minutes for a missing GCS)."""
    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({exc.strerror or type(exc).__name__})",
            "start one with `ray start --head --port=6379` and pass HEAD_IP:6379, "
            "or leave --address out for a local run",
        ) from exc


def start_ray(
    address: str | None = None, num_cpus: int | None = None, object_store_memory: int | None = None
) -> bool:
    """Connect to the cluster at ``address``, or start a local Ray; True if this call started it.

    A Ray already initialized in this process is reused as is (and left running). A local instance
    listens on 127.0.0.1 only and gets ``num_cpus`` (default: all cores) and
    :func:`local_object_store_bytes`; logging is kept to warnings, worker output is not forwarded.
    """
    if address is None and "ray" not in sys.modules:
        # Ray picks the node address when it is imported; a local run needs no outside interface
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = import_ray()
    if ray.is_initialized():
        _quiet(ray)
        return False
    # a notice on every start that token authentication is on (it is: keep it on, but quietly)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    common: dict[str, Any] = {
        "logging_level": logging.WARNING,
        "log_to_driver": False,
        "include_dashboard": False,
    }
    try:
        if address:
            _check_reachable(address)
            ray.init(address=address, **common)
        else:
            ray.init(
                address="local",
                num_cpus=num_cpus or os.cpu_count() or 1,
                object_store_memory=object_store_memory or local_object_store_bytes(),
                **common,
            )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        hint = (
            "a cluster with token authentication (Ray's default) also needs RAY_AUTH_MODE=token and its "
            "token (`ray get-auth-token` on the head) in ~/.ray/auth_token on this machine"
            if address
            else "leave --ray out, or check `ray status` and the logs in /tmp/ray"
        )
        raise ConfigError(
            f"cannot start or reach {where} ({type(exc).__name__}: {str(exc).splitlines()[0]})", hint
        ) from exc
    _quiet(ray)
    return True


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """:func:`start_ray` for the duration of a block; shuts down only what it started."""
    started = start_ray(address, num_cpus)
    ray = import_ray()
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _reraise_cause(exc: BaseException) -> None:
    """A benchroute error raised inside a worker reaches the caller as itself (one readable line)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BenchrouteError):
        raise cause from None


# --------------------------------------------------------------------------------------- embedding
class EmbedWorker:
    """Ray Data actor: one :class:`Embedder` (model loaded once per actor) encoding whole chunks, no cache."""

    def __init__(self, model: str, model_id: str, batch_size: int, fast: str | None = None) -> None:
        self.embedder = Embedder(model, cache=False, batch_size=batch_size, fast=fast)
        if self.embedder.model_id != model_id:
            raise IntegrityError(
                f"the embedding model {model!r} on this Ray node is {self.embedder.model_id}, the driver's "
                "is "
                f"{model_id}",
                "install the same model package on every node",
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows are chunks (start position, texts); output rows are texts (position, vector)."""
        pos, vecs = [], []
        for start, texts in zip(batch["start"], batch["texts"], strict=True):
            chunk = [str(t) for t in texts]
            vecs.append(self.embedder.encode_uncached(chunk))
            pos.append(np.arange(int(start), int(start) + len(chunk)))
        return {"pos": np.concatenate(pos), "vector": np.concatenate(vecs)}


def ray_embed(
    embedder: Embedder,
    texts: Iterable[str],
    *,
    num_actors: int | None = None,
    progress: Progress | None = None,
) -> int:
    """Embed the texts ``embedder``'s cache lacks with Ray Data and write them into that cache.

    Needs a running Ray (:func:`ray_session`). Returns how many texts were embedded; ``progress`` is
    called with the count of each chunk once it is committed. ``num_actors`` defaults to one per CPU
    of the cluster (each actor holds its own copy of the model and uses one core).
    """
    if embedder._cache is None:
        raise ConfigError(
            "embedding on Ray writes into the persistent cache, but this Embedder has none",
            "create it with cache=None (the default cache) or a cache path",
        )
    ray = import_ray()
    todo = embedder.missing(texts)
    if not todo:
        return 0
    chunks = embedder.chunks(todo)
    flat = [t for c in chunks for t in c]
    starts = np.cumsum([0] + [len(c) for c in chunks[:-1]])
    actors = num_actors or int(max(1, min(len(chunks), ray.cluster_resources().get("CPU", 1))))
    ds = ray.data.from_items(
        [{"start": int(s), "texts": c} for s, c in zip(starts, chunks, strict=True)],
        override_num_blocks=len(chunks),
    )
    out = ds.map_batches(
        EmbedWorker,
        batch_size=1,
        batch_format="numpy",
        num_cpus=1,
        fn_constructor_kwargs={
            "model": embedder.model,
            "model_id": embedder.model_id,
            "batch_size": embedder.batch_size,
            "fast": embedder.fast,
        },
        compute=ray.data.ActorPoolStrategy(size=actors),
    )
    try:
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            embedder.store([flat[i] for i in batch["pos"]], batch["vector"])
            if progress is not None:
                progress(len(batch["pos"]))
    except ray.exceptions.RayError as exc:
        _reraise_cause(exc)
        raise
    return len(todo)


# ------------------------------------------------------------------------------------------- LOTO
class LOTOWorker:
    """Ray actor holding the shared evaluator: deserialized once per worker, not once per task."""

    def __init__(self, ev: Any) -> None:
        self.ev = ev

    def rows(
        self, d: int, alphas: Sequence[float], repeats: int, candidates: np.ndarray | None
    ) -> tuple[int, list[dict[str, Any]]]:
        """Every alpha and repeat of held-out task d, by the serial loop itself."""
        return d, self.ev.run(alphas=alphas, repeats=repeats, tasks=[d], candidates=candidates)


class RayLOTORunner:
    """Runs :meth:`~benchroute.experiments.evaluate.LOTOEvaluator.run`, each held-out task a Ray actor task.

    Pass it as ``runner=`` (or to ``run_experiments``). The evaluator goes into the object store once;
    a pool of :class:`LOTOWorker` actors (one per ``num_cpus`` of the cluster) maps it zero-copy and
    scores one held-out task per call. The rows are those of the serial run, in the same order. The
    pool is kept for further calls with the same evaluator (LOTO, then the alpha sweep). Needs a
    running Ray (:func:`ray_session`).

    Parameters
    ----------
    num_cpus : CPUs reserved per worker. 1 = one worker per core, numpy single-threaded in each.
    max_workers : cap on the pool size (default: as many as the cluster's CPUs allow).
    """

    def __init__(self, num_cpus: float = 1.0, max_workers: int | None = None) -> None:
        self.num_cpus = num_cpus
        self.max_workers = max_workers
        self._pool: tuple[Any, list[Any]] | None = None  # (evaluator, actor handles)

    def _workers(self, ray: Any, ev: Any, n_tasks: int) -> list[Any]:
        if self._pool is not None and self._pool[0] is ev:
            return self._pool[1]
        # the nested confidence pairs of every held-out task come from one pass over all tasks: build
        # them here once (cached on the evaluator) rather than once per worker
        ev.confidence(0)
        shared = ray.put(ev)
        n = max(1, int(ray.cluster_resources().get("CPU", 1) // self.num_cpus))
        n = min(n, n_tasks, self.max_workers or n)
        actor = ray.remote(num_cpus=self.num_cpus, max_restarts=0)(LOTOWorker)
        self._pool = (ev, [actor.remote(shared) for _ in range(n)])
        return self._pool[1]

    def __call__(
        self,
        ev: Any,
        tasks: Sequence[int],
        alphas: Sequence[float],
        repeats: int,
        candidates: np.ndarray | None,
        progress: Progress | None,
    ) -> list[dict[str, Any]]:
        ray = import_ray()
        if not ray.is_initialized():
            raise ConfigError(
                "Ray is not running", "wrap the run in benchroute.experiments.distributed.ray_session()"
            )
        if not tasks:
            return []
        from ray.util import ActorPool

        pool = ActorPool(self._workers(ray, ev, len(tasks)))
        rows: dict[int, list[dict[str, Any]]] = {}
        try:
            for d, got in pool.map_unordered(
                lambda a, d: a.rows.remote(d, list(alphas), repeats, candidates), list(tasks)
            ):
                rows[d] = got
                if progress is not None:
                    progress(1)
        except ray.exceptions.RayError as exc:
            self._pool = None  # the actors go when their handles do
            _reraise_cause(exc)
            raise
        return [row for d in tasks for row in rows[d]]

    def __repr__(self) -> str:
        return f"RayLOTORunner(num_cpus={self.num_cpus}, max_workers={self.max_workers})"
