"""The query-embedding service: micro-batched, LRU-cached, off the event loop, loaded in the background.

The embedding model (seconds to load: torch, then the weights) loads on a worker thread after the
server starts listening, so ``/healthz`` answers at once and ``/readyz`` says when routing is ready.
Each embedding model has one worker thread per process, shared by every app of the process; queries
that arrive while a batch is being embedded are embedded together in the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from benchroute.errors import ModelNotAvailableError
from benchroute.server.metrics import Metrics

log = logging.getLogger("benchroute.server")

_MODEL_LOCK = threading.Lock()
_MODEL_WORKERS: dict[str, tuple[ThreadPoolExecutor, Any]] = {}


def quiet_third_party() -> None:
    """No progress bars ("Loading weights ...") nor info chatter from the model libraries in a server log."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    with contextlib.suppress(ImportError):
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)


def check_model(model_name: str) -> None:
    """Fail fast (a :class:`ModelNotAvailableError`) for an embedding model that is not installed,
    without loading it."""
    from benchroute.embed import resolve_model_path

    resolve_model_path(model_name)


def model_worker(model_name: str) -> tuple[ThreadPoolExecutor, Any]:
    """One loaded embedding model and its single worker thread per process (shared by all apps)."""
    with _MODEL_LOCK:
        got = _MODEL_WORKERS.get(model_name)
        if got is None:
            quiet_third_party()
            from benchroute.embed import Embedder

            embedder = Embedder(model_name, cache=False)
            _ = embedder.sentence_transformer  # load the weights here, on the loader thread
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="benchroute-embed")
            got = _MODEL_WORKERS[model_name] = (executor, embedder)
        return got


class EmbeddingService:
    """Micro-batched, LRU-cached query embedding off the event loop.

    ``embed(texts)`` waits for the model (it loads in the background after :meth:`start`), enqueues
    the texts that are neither cached nor already queued and awaits their vectors; one background
    task drains the queue into batches of up to ``batch_size`` texts, each embedded on the model's
    worker thread.
    """

    def __init__(self, model_name: str, batch_size: int, cache_size: int, metrics: Metrics) -> None:
        self.model_name = model_name
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.metrics = metrics
        self.error: BaseException | None = None
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[np.ndarray]] = {}
        self._queue: list[str] = []
        self._wakeup: asyncio.Event | None = None
        self._loaded: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._executor: ThreadPoolExecutor | None = None
        self._embedder: Any = None

    @property
    def ready(self) -> bool:
        return self._embedder is not None and self._wakeup is not None

    @property
    def status(self) -> str:
        """``loading``, ``ready`` or ``failed``."""
        return "failed" if self.error is not None else "ready" if self.ready else "loading"

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
            executor, embedder = await asyncio.to_thread(model_worker, self.model_name)
            # one pass now, so the first request does not pay for the lazy parts of the model
            await loop.run_in_executor(executor, embedder.encode_uncached, ["warm up"])
            self._executor, self._embedder = executor, embedder
            log.info("embedding model %s loaded", self.model_name)
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
        for fut in self._inflight.values():
            if not fut.done():
                fut.set_exception(RuntimeError("server shutting down"))
        self._inflight.clear()

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        await self.wait_ready()
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        slots: list[np.ndarray | asyncio.Future[np.ndarray]] = []
        hits = 0
        for t in texts:
            vec = self._lru.get(t)
            if vec is not None:
                self._lru.move_to_end(t)
                slots.append(vec)
                hits += 1
                continue
            fut = self._inflight.get(t)
            if fut is None:
                fut = self._inflight[t] = loop.create_future()
                self._queue.append(t)
            slots.append(fut)
        if hits:
            self.metrics.inc("benchroute_embedding_cache_hits_total", hits)
        if self._queue:
            self._wakeup.set()
        # shield: a cancelled request must not cancel a vector other requests are waiting for
        vecs = [s if isinstance(s, np.ndarray) else await asyncio.shield(s) for s in slots]
        return np.stack(vecs) if vecs else np.zeros((0, 0), np.float32)

    async def _worker(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = self._queue[: self.batch_size]
                del self._queue[: self.batch_size]
                try:
                    vecs = await loop.run_in_executor(self._executor, self._embedder.encode_uncached, batch)
                except Exception as exc:  # handed to every waiting request
                    log.exception("embedding a batch of %d texts failed", len(batch))
                    for t in batch:
                        fut = self._inflight.pop(t, None)
                        if fut is not None and not fut.done():
                            fut.set_exception(exc)
                    continue
                self.metrics.inc("benchroute_embedding_batches_total")
                self.metrics.inc("benchroute_embedded_texts_total", len(batch))
                for t, v in zip(batch, vecs, strict=True):
                    if self.cache_size:
                        self._lru[t] = v
                        if len(self._lru) > self.cache_size:
                            self._lru.popitem(last=False)
                    fut = self._inflight.pop(t, None)
                    if fut is not None and not fut.done():
                        fut.set_result(v)


__all__ = ["EmbeddingService", "check_model", "model_worker", "quiet_third_party"]
