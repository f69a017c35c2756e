"""Serving-side embedding: a micro-batcher that owns the model, and an LRU cache of query vectors.

Concurrent requests each want one or two short query vectors. Run one by one (or all at once on a
thread pool) they leave the accelerator idle or fight over the CPU; :class:`MicroBatcher` queues them,
waits at most a few milliseconds for company, and embeds them in one forward pass on its interactive
worker. Callers that have other work (the BM25 leg) take a future with :meth:`MicroBatcher.submit_queries`.

Two lanes share the model fairly. ``interactive`` (the questions of searches) has a worker of its own, so a
search never queues behind bulk work; ``bulk`` (documents, ingest batches, embedding requests with many
inputs) runs on the other worker in slices of at most ``bulk_slice`` texts, one at a time, first come first
served (a slice is the unit in which bulk work is cancelled).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from retrieval.embedders.base import Delegating, EmbedderBase, EmbedderError
from retrieval.protocols import Embedder

__all__ = [
    "MicroBatcher",
    "QueryCache",
    "SharedModel",
    "Side",
    "Lane",
    "DEFAULT_MAX_WAIT_MS",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_BULK_SLICE",
    "batcher_of",
]

log = logging.getLogger(__name__)

Side = Literal["query", "document", "tokens"]
"""What a request holds: query texts, document texts, or pre-tokenised documents (ingest through the server)."""
Lane = Literal["interactive", "bulk"]
"""Who waits on a request: a person behind a search (``interactive``) or a batch job (``bulk``)."""
DEFAULT_MAX_WAIT_MS = 2.0
DEFAULT_MAX_BATCH = 64
DEFAULT_BULK_SLICE = 1


@dataclass
class _Request:
    texts: list[str]
    side: Side
    lane: Lane = "interactive"
    instruction: str | None = None
    future: Future[np.ndarray] = field(default_factory=Future)


class _Lanes:
    """The two queues of waiting requests and the stop mark, under one condition."""

    def __init__(self) -> None:
        self.interactive: deque[_Request] = deque()
        self.bulk: deque[_Request] = deque()
        self.stopping = False
        self.changed = threading.Condition()

    def put(self, request: _Request) -> None:
        with self.changed:
            (self.interactive if request.lane == "interactive" else self.bulk).append(request)
            self.changed.notify_all()

    def stop(self) -> None:
        with self.changed:
            self.stopping = True
            self.changed.notify_all()

    def next_interactive(self, max_batch: int, wait_s: float) -> list[_Request] | None:
        """Waiting interactive requests (up to ``max_batch`` texts, waiting up to ``wait_s`` for company);
        ``None`` once stopped and empty."""
        with self.changed:
            while not (self.interactive or self.stopping):
                self.changed.wait()
            if not self.interactive:
                return None
            batch = [self.interactive.popleft()]
            size = len(batch[0].texts)
            deadline = time.monotonic() + wait_s
            while size < max_batch:
                if not self.interactive:
                    left = deadline - time.monotonic()
                    if left <= 0 or self.stopping:
                        break
                    self.changed.wait(left)
                    continue
                batch.append(self.interactive.popleft())
                size += len(batch[-1].texts)
            return batch

    def next_bulk(self) -> _Request | None:
        """The next bulk slice; ``None`` once stopped and empty."""
        with self.changed:
            while not (self.bulk or self.stopping):
                self.changed.wait()
            return self.bulk.popleft() if self.bulk else None

    def drain(self) -> list[_Request]:
        with self.changed:
            left = [*self.interactive, *self.bulk]
            self.interactive.clear()
            self.bulk.clear()
            return left


class MicroBatcher(Delegating):
    """Embed texts from many threads in shared forward passes, on two worker threads: one for each lane.

    Interactive requests that queue while a forward pass runs form the next batch. Under concurrent load
    (the last batch served several requests) the worker also waits up to ``max_wait_ms`` for more; a lone
    caller never waits. Bulk work runs one slice at a time on its own worker, so a search never waits for
    it: both forward passes run at once (inference holds no state in the model).

    Args:
        inner: The embedder (the worker thread is its only caller).
        max_wait_ms: Longest the first request of a batch waits for others to join.
        max_batch: Most texts in one forward pass (a larger request still runs whole, alone).
        on_batch: Called with the number of texts of each forward pass (e.g. a metrics histogram).
        bulk_slice: Most texts of one bulk forward pass (the unit in which bulk work is cancelled).
    """

    def __init__(
        self,
        inner: Embedder,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        max_batch: int = DEFAULT_MAX_BATCH,
        on_batch: Callable[[int], None] | None = None,
        bulk_slice: int = DEFAULT_BULK_SLICE,
    ) -> None:
        super().__init__(inner)
        self.bulk_slice = max(1, bulk_slice)
        self.max_wait_s = max(0.0, max_wait_ms / 1000)
        self.max_batch = max(1, max_batch)
        self.on_batch = on_batch
        self.batch_sizes: list[int] = []
        """Texts per forward pass, most recent last (bounded; for metrics and tests)."""
        self._lanes = _Lanes()
        self._closed = threading.Event()
        self._under_load = False
        self._workers = [
            threading.Thread(target=self._serve_interactive, name="zhrag-microbatch", daemon=True),
            threading.Thread(target=self._serve_bulk, name="zhrag-microbatch-bulk", daemon=True),
        ]
        for worker in self._workers:
            worker.start()

    # -- submitting ------------------------------------------------------------------------------
    def submit(
        self, texts: Sequence[str], side: Side, lane: Lane | None = None, instruction: str | None = None
    ) -> Future[np.ndarray]:
        """Queue texts; the future holds their vectors (or the error embedding them raised).

        ``lane`` defaults to ``interactive`` for queries and ``bulk`` for documents; bulk work is cut into
        slices of ``bulk_slice`` texts queued one after another. ``instruction`` replaces the model's query
        task for these queries (a knowledge base of another domain sharing the model; a sentence-transformers
        model only).
        """
        lane = lane or ("interactive" if side == "query" else "bulk")
        texts = list(texts)
        if not texts:
            done: Future[np.ndarray] = Future()
            done.set_result(np.zeros((0, self.dim), dtype=np.float32))
            return done
        if self._closed.is_set():
            raise EmbedderError("the embedding worker has stopped")
        if lane == "bulk" and len(texts) > self.bulk_slice:
            return self._sliced(texts, side)
        request = _Request(texts, side, lane, instruction if side == "query" else None)
        self._lanes.put(request)
        return request.future

    def _sliced(self, texts: list[str], side: Side) -> Future[np.ndarray]:
        """Bulk texts in slices, each queued when the one before is done (then a search goes between)."""
        done: Future[np.ndarray] = Future()
        parts: list[np.ndarray] = []

        def next_slice(start: int) -> None:
            if done.cancelled():
                return
            if start >= len(texts):
                done.set_result(np.concatenate(parts))
                return
            piece = _Request(texts[start : start + self.bulk_slice], side, "bulk")

            def finished(f: Future[np.ndarray]) -> None:
                failure = EmbedderError("a slice was cancelled") if f.cancelled() else f.exception()
                if failure is not None:
                    if not done.done():
                        done.set_exception(failure)
                    return
                parts.append(f.result())
                next_slice(start + self.bulk_slice)

            piece.future.add_done_callback(finished)
            if self._closed.is_set():
                piece.future.set_exception(EmbedderError("the embedding worker has stopped"))
                return
            self._lanes.put(piece)

        next_slice(0)
        return done

    def submit_queries(self, texts: Sequence[str]) -> Future[np.ndarray]:
        """Queue queries (with the query instruction), ahead of bulk work."""
        return self.submit(texts, "query")

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Query vectors, computed in a shared batch."""
        return self.submit(texts, "query").result()

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Document vectors, in bulk slices."""
        return self.submit(texts, "document").result()

    def embed_token_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Pre-tokenised documents (an ingest batch), in bulk slices on the worker: the model keeps one owner."""
        return self.submit(batch, "tokens").result()  # type: ignore[arg-type]

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish what is queued, then stop the workers; later submissions raise."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._lanes.stop()
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._workers:
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._fail_leftovers()

    @property
    def running(self) -> bool:
        """Whether a worker is still serving (false once :meth:`close` has finished)."""
        return any(worker.is_alive() for worker in self._workers)

    # -- the workers -----------------------------------------------------------------------------
    def _serve_interactive(self) -> None:
        while batch := self._lanes.next_interactive(self.max_batch, self.max_wait_s if self._under_load else 0):
            self._under_load = len(batch) > 1
            self._run(batch)

    def _serve_bulk(self) -> None:
        while (request := self._lanes.next_bulk()) is not None:
            self._run([request])

    def _run(self, batch: list[_Request]) -> None:
        for request in batch:
            if request.side == "tokens" and request.future.set_running_or_notify_cancel():
                self._run_alone(request)  # an ingest batch is already sized by its token budget
        groups: dict[tuple[str, str | None], list[_Request]] = {}
        for r in batch:
            if r.side != "tokens" and r.future.set_running_or_notify_cancel():
                groups.setdefault((r.side, r.instruction), []).append(r)
        for (side, instruction), requests in groups.items():
            texts = list(dict.fromkeys(t for r in requests for t in r.texts))  # a repeated text runs once
            try:
                vectors = self._embed(texts, side, instruction)  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - retried alone so one bad request fails only itself
                for r in requests:
                    self._run_alone(r)
                continue
            self._record(len(texts))
            row = {t: i for i, t in enumerate(texts)}
            for r in requests:
                r.future.set_result(vectors[[row[t] for t in r.texts]])

    def _run_alone(self, request: _Request) -> None:
        try:
            vectors = self._embed(request.texts, request.side, request.instruction)
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            request.future.set_exception(exc)
        else:
            self._record(len(request.texts))
            request.future.set_result(vectors)

    def _embed(self, texts: list[str], side: Side, instruction: str | None = None) -> np.ndarray:
        if side == "tokens":
            return self.inner.embed_token_ids(texts)  # type: ignore[attr-defined]
        if side == "document":
            return self.inner.embed_documents(texts)
        if instruction is None:
            return self.inner.embed_queries(texts)
        return self.inner.embed_queries(texts, instruction=instruction)  # type: ignore[call-arg]

    def _record(self, size: int) -> None:
        if self.on_batch is not None:
            self.on_batch(size)
        self.batch_sizes.append(size)
        if len(self.batch_sizes) > 4096:
            del self.batch_sizes[:2048]

    def _fail_leftovers(self) -> None:
        for item in self._lanes.drain():
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(EmbedderError("the embedding worker has stopped"))


class SharedModel(Delegating):
    """One knowledge base's view of a micro-batcher that several bases share: the same model and workers, this
    base's query instruction (its domain). Closing the view leaves the shared batcher running.

    Args:
        batcher: The shared micro-batcher (over a sentence-transformers model when instructions differ).
        instruction: This base's query task.
    """

    inner: MicroBatcher

    def __init__(self, batcher: MicroBatcher, instruction: str | None) -> None:
        super().__init__(batcher)
        self._instruction = instruction

    @property
    def instruction(self) -> str | None:
        """This base's query task."""
        return self._instruction

    def describe(self) -> dict[str, Any]:
        """The model's manifest entry with this base's instruction."""
        return {**self.inner.describe(), "instruction": self.instruction}

    def submit_queries(self, texts: Sequence[str]) -> Future[np.ndarray]:
        """Queue queries with this base's instruction."""
        return self.inner.submit(texts, "query", instruction=self.instruction)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Query vectors with this base's instruction."""
        return self.submit_queries(texts).result()

    def close(self) -> None:
        """Nothing: the batcher belongs to whoever shares it out."""
        return None  # the shared batcher keeps running


class QueryCache(Delegating):
    """An LRU cache of query vectors in front of an embedder (chatbots repeat questions).

    Args:
        inner: The embedder (or a :class:`MicroBatcher`).
        size: Most vectors kept.
    """

    def __init__(self, inner: EmbedderBase, size: int) -> None:
        from cachetools import LRUCache

        super().__init__(inner)
        self._cache: LRUCache[str, np.ndarray] = LRUCache(maxsize=max(1, size))
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Cached query vectors (documents are not cached: they are embedded once, at ingest)."""
        return self.submit_queries(texts).result()

    def submit_queries(self, texts: Sequence[str]) -> Future[np.ndarray]:
        """Cached vectors at once; the others from the inner embedder (batched if it batches)."""
        texts = list(texts)
        with self._lock:
            found = {t: v for t in texts if (v := self._cache.get(t)) is not None}
            self.hits += sum(t in found for t in texts)
            self.misses += sum(t not in found for t in texts)
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        done: Future[np.ndarray] = Future()

        def finish(vectors: np.ndarray | None) -> None:
            if vectors is not None:
                with self._lock:
                    for text, vector in zip(missing, vectors, strict=True):
                        self._cache[text] = vector
                        found[text] = vector
            rows = [found[t] for t in texts]
            done.set_result(np.stack(rows) if rows else np.zeros((0, self.dim), dtype=np.float32))

        if not missing:
            finish(None)
            return done
        pending = self.inner.submit_queries(missing)

        def resolved(f: Future[np.ndarray]) -> None:
            if f.exception() is not None:
                done.set_exception(f.exception())  # type: ignore[arg-type]
            else:
                finish(f.result())

        pending.add_done_callback(resolved)
        return done


def batcher_of(embedder: Embedder) -> MicroBatcher | None:
    """The :class:`MicroBatcher` that owns the model behind ``embedder`` (through caches and views), if any."""
    while isinstance(embedder, Delegating):
        if isinstance(embedder, MicroBatcher):
            return embedder
        embedder = embedder.inner
    return None
