"""The query-embedding service: two priority lanes, a queueing budget, cancellation, truncation.

* **Loaded in the background.** The embedding model (seconds to load: torch, then the weights) loads
  on a thread after the server starts listening, so ``/healthz`` answers at once and ``/readyz`` says
  when routing is ready. One model and one worker thread per process, shared by every app.
* **Truncated before it is queued.** A query is cut to what the model reads (its token window,
  ``max_seq_length`` tokens) before it is queued: the vector is the same, the queue never holds
  20,000-character texts, and the in-memory LRU is keyed by what the model actually saw.
* **Two lanes.** Routing queries (chat completions, single-query ``/v1/route``) go to the routing
  lane; ``/v1/recommend`` and multi-query ``/v1/route`` to the bulk lane. The worker always drains
  the routing lane first and takes bulk work in small batches (``embedding.bulk_batch_size``), so
  bulk work delays a routing query by at most one small batch and can never starve it.
* **Micro-batching** (torch): routing queries that arrive while a batch is being embedded are embedded
  together in the next batch (up to ``embedding.batch_size``), so concurrent requests share passes.
  The ONNX encoder runs one unpadded pass per text (batching does not pay there), so it is given one
  text at a time and a query is "started" only when it is on the model.
* **Budget and cancellation.** A caller may give a queueing budget: if its texts have not started
  embedding within it, :class:`BudgetExceeded` is raised and the texts leave the queue (unless
  another request waits for them). A cancelled caller (client gone, deadline) likewise takes its
  texts out of the queue: abandoned work is never started. A batch already on the model runs to its
  end (a forward pass cannot be interrupted), which is why bulk batches are small.

The model behind the service is a :class:`QueryEncoder`; :func:`load_encoder` picks the fastest one
available for the model name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from benchroute.errors import ModelNotAvailableError
from benchroute.server.metrics import Metrics

log = logging.getLogger("benchroute.server")

Lane = Literal["routing", "bulk"]
#: Texts up to this long are tokenized on the event loop (well under a millisecond), longer ones on
#: a thread.
INLINE_TOKENIZE_CHARS = 2_000


class QueryEncoder(Protocol):
    """What the service needs from an embedding model."""

    name: str
    #: Whether a batch of texts costs less than the texts one by one. When it does not, the service
    #: gives the model one text at a time, so "started" means on the model and the budget is exact.
    batches: bool

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Normalized float32 vectors (n x dim)."""
        ...

    def truncate(self, text: str) -> str:
        """The prefix of ``text`` the model reads (its token window): the same vector as the whole."""
        ...


class EmbedderEncoder:
    """:class:`benchroute.embed.Embedder` (no disk cache) as a :class:`QueryEncoder`: ONNX Runtime
    (``fast="onnx"``, the serving path: the same fp32 weights, one unpadded pass per text, no torch
    once the export is cached) or sentence-transformers on torch."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        onnx = embedder.fast == "onnx"
        self.name = f"{embedder.model} ({'onnx' if onnx else 'torch'})"
        # ONNX runs one unpadded pass per text (padding cost more than batching saved: benchmarks/README.md)
        self.batches = not onnx

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.embedder.encode_uncached(list(texts)), dtype=np.float32)

    def truncate(self, text: str) -> str:
        return str(self.embedder.truncate(text))


def check_model(model_name: str, backend: str = "auto") -> None:
    """Fail fast (a :class:`ModelNotAvailableError`) for an embedding model or backend that is not
    installed, without loading it."""
    from benchroute.embed import ONNX_INSTALL_HINT, onnx_available, resolve_model_path

    resolve_model_path(model_name)
    if backend == "onnx" and not onnx_available():
        raise ModelNotAvailableError("embedding.backend: onnx needs onnxruntime and onnx", ONNX_INSTALL_HINT)


def load_encoder(model_name: str, backend: str = "auto", threads: int | None = None) -> QueryEncoder:
    """The query encoder for ``model_name``, loaded (seconds; the first ONNX use also exports the
    model, ~20 s for mpnet, once per machine). ``backend``: ``onnx``, ``torch``, or ``auto`` (ONNX
    Runtime when installed: ~1.5x torch per query on one core, far more when cores are shared)."""
    from benchroute.embed import Embedder, onnx_available

    if backend == "auto":
        backend = "onnx" if onnx_available() else "torch"
    if backend == "onnx":
        embedder = Embedder(model_name, cache=False, fast="onnx", threads=threads)
        _ = embedder.onnx  # export (first time) and load the session here, on the loader thread
    else:
        embedder = Embedder(model_name, cache=False)
        _ = embedder.sentence_transformer
    _ = embedder.tokenizer
    return EmbedderEncoder(embedder)


_MODEL_LOCK = threading.Lock()
_MODEL_WORKERS: dict[str, tuple[ThreadPoolExecutor, QueryEncoder]] = {}


def model_worker(
    model_name: str, backend: str = "auto", threads: int | None = None
) -> tuple[ThreadPoolExecutor, QueryEncoder]:
    """One loaded encoder and its single worker thread per (model, backend) and process, shared by
    every app of the process."""
    with _MODEL_LOCK:
        key = f"{model_name}|{backend}|{threads}"
        got = _MODEL_WORKERS.get(key)
        if got is None:
            encoder = load_encoder(model_name, backend, threads)
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="benchroute-embed")
            got = _MODEL_WORKERS[key] = (executor, encoder)
        return got


class BudgetExceeded(Exception):
    """The texts did not start embedding within the caller's budget (``reason`` says why)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Job:
    """One distinct text waiting for (or being given) its vector."""

    text: str
    lane: Lane
    result: asyncio.Future[np.ndarray]
    started: asyncio.Future[None]
    waiters: int = 0
    dropped: bool = False  # every waiter left before it started: never embed it


@dataclass
class _Lanes:
    routing: deque[_Job] = field(default_factory=deque)
    bulk: deque[_Job] = field(default_factory=deque)

    def __len__(self) -> int:
        return len(self.routing) + len(self.bulk)


class EmbeddingService:
    """Query embedding off the event loop (see the module docstring)."""

    def __init__(
        self,
        model_name: str,
        batch_size: int,
        cache_size: int,
        metrics: Metrics,
        bulk_batch_size: int = 4,
        backend: str = "auto",
        threads: int | None = None,
    ) -> None:
        self.model_name = model_name
        self.backend = backend
        self.threads = threads
        self.batch_size = batch_size
        self.bulk_batch_size = bulk_batch_size
        self.cache_size = cache_size
        self.metrics = metrics
        self.error: BaseException | None = None
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self._jobs: dict[str, _Job] = {}
        self._lanes = _Lanes()
        self._wakeup: asyncio.Event | None = None
        self._loaded: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._executor: ThreadPoolExecutor | None = None
        self._encoder: QueryEncoder | None = None

    # ---------------------------------------------------------------------------------- lifecycle
    @property
    def ready(self) -> bool:
        return self._encoder is not None

    @property
    def status(self) -> str:
        """``loading``, ``ready`` or ``failed``."""
        return "failed" if self.error is not None else "ready" if self.ready else "loading"

    @property
    def queued(self) -> dict[str, int]:
        """Texts waiting per lane (for the metrics)."""
        return {"routing": len(self._lanes.routing), "bulk": len(self._lanes.bulk)}

    async def start(self) -> None:
        """Start the batcher and load the model in the background (returns at once)."""
        self._wakeup = asyncio.Event()
        self._loaded = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._worker(), name="benchroute-embed-batcher"),
            asyncio.create_task(self._load(), name="benchroute-embed-loader"),
        ]

    async def _load(self) -> None:
        assert self._loaded is not None
        loop = asyncio.get_running_loop()
        try:
            executor, encoder = await asyncio.to_thread(
                model_worker, self.model_name, self.backend, self.threads
            )
            # one pass now, so the first request does not pay for the lazy parts of the model
            await loop.run_in_executor(executor, encoder.encode, ["warm up"])
            self._executor, self._encoder = executor, encoder
            log.info("embedding model %s loaded", encoder.name)
        except Exception as exc:  # kept and reported by /readyz and every request that needs it
            log.error("cannot load embedding model %s: %s", self.model_name, exc)
            self.error = exc
        finally:
            self._loaded.set()

    async def wait_ready(self) -> None:
        if self._loaded is None:
            raise RuntimeError("embedding service not started")
        await self._loaded.wait()
        if self.error is not None:
            raise ModelNotAvailableError(f"embedding model {self.model_name!r} failed to load: {self.error}")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for job in self._jobs.values():
            if not job.result.done():
                job.result.set_exception(RuntimeError("server shutting down"))
                job.result.exception()  # retrieved: no "never retrieved" warning for abandoned jobs
        self._jobs.clear()

    # ------------------------------------------------------------------------------------ callers
    async def truncate(self, texts: Sequence[str]) -> list[str]:
        """Each text cut to the model's token window (waits for the model)."""
        await self.wait_ready()
        enc = self._encoder
        assert enc is not None
        out = []
        for t in texts:
            if len(t) <= INLINE_TOKENIZE_CHARS:
                out.append(enc.truncate(t))
            else:
                out.append(await asyncio.to_thread(enc.truncate, t))
        return out

    async def embed(
        self, texts: Sequence[str], lane: Lane = "routing", budget_s: float | None = None
    ) -> np.ndarray:
        """The vectors of ``texts`` (cut to the token window first), one row per text.

        With ``budget_s``, raise :class:`BudgetExceeded` if the model is not loaded yet or the texts
        have not all started embedding within ``budget_s`` seconds of queueing. On any exit
        (including cancellation) texts no other caller waits for are taken out of the queue.
        """
        if budget_s is not None and not self.ready:
            await asyncio.sleep(0)  # let a just-finished load report itself
            if self.error is not None:
                raise BudgetExceeded("embedding_failed")
            if not self.ready:
                raise BudgetExceeded("embedding_loading")
        keys = await self.truncate(texts)
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        slots: list[np.ndarray | _Job] = []
        mine: list[_Job] = []
        hits = 0
        for key in keys:
            vec = self._lru.get(key)
            if vec is not None:
                self._lru.move_to_end(key)
                slots.append(vec)
                hits += 1
                continue
            job = self._jobs.get(key)
            if job is None:
                job = self._jobs[key] = _Job(key, lane, loop.create_future(), loop.create_future())
                getattr(self._lanes, lane).append(job)
            elif lane == "routing" and job.lane == "bulk" and not job.started.done():
                job.lane = "routing"  # promoted: a routing query never waits behind bulk work
                self._lanes.routing.append(job)
            if job not in mine:
                job.waiters += 1
                mine.append(job)
            slots.append(job)
        if hits:
            self.metrics.inc("benchroute_embedding_cache_hits_total", hits)
        if not mine:
            return np.stack([s for s in slots if isinstance(s, np.ndarray)])
        self._wakeup.set()
        try:
            if budget_s is not None:
                late = {j.started for j in mine if not j.started.done()}
                if late and budget_s > 0:
                    _, late = await asyncio.wait(late, timeout=budget_s)
                if late:
                    raise BudgetExceeded("routing_budget")
            # shield: one caller leaving must not cancel a vector other callers wait for
            vecs = [s if isinstance(s, np.ndarray) else await asyncio.shield(s.result) for s in slots]
        finally:
            for job in mine:
                self._release(job)
        return np.stack(vecs)

    def _release(self, job: _Job) -> None:
        job.waiters -= 1
        if job.waiters == 0 and not job.started.done():
            job.dropped = True
            if self._jobs.get(job.text) is job:
                del self._jobs[job.text]
            job.result.cancel()
            self.metrics.inc("benchroute_embedding_dropped_total", lane=job.lane)

    # ------------------------------------------------------------------------------------- worker
    def _next_batch(self) -> list[_Job]:
        """Up to ``batch_size`` routing jobs, else up to ``bulk_batch_size`` bulk jobs (one job at a
        time for an encoder that does not gain from batches)."""
        single = self._encoder is not None and not self._encoder.batches
        sizes = (1, 1) if single else (self.batch_size, self.bulk_batch_size)
        for lane, size in zip((self._lanes.routing, self._lanes.bulk), sizes, strict=True):
            batch: list[_Job] = []
            while lane and len(batch) < size:
                job = lane.popleft()
                if not job.dropped and not job.started.done():  # stale: dropped, or promoted and taken
                    batch.append(job)
            if batch:
                return batch
        return []

    async def _worker(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._lanes:
                batch = self._next_batch()
                if not batch:
                    break
                for job in batch:
                    job.started.set_result(None)
                texts = [j.text for j in batch]
                try:
                    assert self._encoder is not None
                    vecs = await loop.run_in_executor(self._executor, self._encoder.encode, texts)
                except Exception as exc:  # handed to every waiting request
                    log.exception("embedding a batch of %d texts failed", len(batch))
                    for job in batch:
                        self._jobs.pop(job.text, None)
                        if not job.result.done():
                            job.result.set_exception(exc)
                    continue
                self.metrics.inc("benchroute_embedding_batches_total")
                self.metrics.inc("benchroute_embedded_texts_total", len(batch))
                for job, v in zip(batch, vecs, strict=True):
                    if self.cache_size:
                        self._lru[job.text] = v
                        if len(self._lru) > self.cache_size:
                            self._lru.popitem(last=False)
                    if self._jobs.get(job.text) is job:
                        del self._jobs[job.text]
                    if not job.result.done():
                        job.result.set_result(v)


__all__ = [
    "BudgetExceeded",
    "EmbedderEncoder",
    "EmbeddingService",
    "QueryEncoder",
    "check_model",
    "load_encoder",
    "model_worker",
]
