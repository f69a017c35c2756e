"""The embedding stage of ingest: token-budget batches of pre-tokenised chunks, one thread per device.

A shard's chunks are sorted by length and cut into batches of at most ``max_batch_tokens`` padded
positions (:func:`retrieval.embedders.tokens.plan_batches`), then spread over the devices. Each device
has one thread that owns its model replica, so the stage overlaps with the CPU stages and index writes
running in the main thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from retrieval.embedders.tokens import default_max_batch_tokens, plan_batches
from retrieval.protocols import Embedder

__all__ = [
    "EmbedStage",
    "EmbedStats",
    "default_max_batch_tokens",
    "MAX_BATCH_SIZE",
    "TEXT_BATCH",
]

MAX_BATCH_SIZE = 1024
"""Most sequences in one batch, whatever the token budget."""
TEXT_BATCH = 64
"""Texts per call for embedders that take text (remote servers, cached embedders)."""


@dataclass
class EmbedStats:
    """What the embedding stage did (for the ingest summary)."""

    tokens: int = 0
    padded: int = 0
    batches: int = 0
    busy_s: dict[str, float] = field(default_factory=dict)

    @property
    def padding_ratio(self) -> float:
        """Share of computed positions that were padding."""
        return 1 - self.tokens / self.padded if self.padded else 0.0

    @property
    def seconds(self) -> float:
        """Wall time of the busiest device."""
        return max(self.busy_s.values(), default=0.0)


class _DeviceThread:
    """One daemon thread that runs a device's jobs in order.

    A daemon, unlike a ``ThreadPoolExecutor``'s worker, which the interpreter joins at exit: Ctrl-C while a
    stalled embedding server held a request waited out its timeout and retries (minutes) before the
    command could end.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[None], Callable[[], None]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, run = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                run()
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)
            else:
                future.set_result(None)

    def submit(self, run: Callable[[], None]) -> Future[None]:
        future: Future[None] = Future()
        self._jobs.put((future, run))
        return future

    def stop(self, wait: bool) -> None:
        self._jobs.put(None)
        if wait:
            self._thread.join()


class EmbedStage:
    """Embed shards of chunks on one or more devices.

    Args:
        embedder: The document embedder. One that ``takes_token_ids`` gets pre-tokenised, token-budget batches;
            any other embedder gets text batches of ``TEXT_BATCH``.
        replicas: One embedder per device (``[embedder]`` for a single device).
        max_batch_tokens: Padded positions per batch (default by device kind).
        on_progress: Called with the number of chunks of each finished batch (from the device threads).
    """

    def __init__(
        self,
        embedder: Embedder,
        replicas: Sequence[Embedder] | None = None,
        max_batch_tokens: int | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.embedder = embedder
        self.replicas = list(replicas or [embedder])
        self.tokenised = all(r.takes_token_ids for r in self.replicas)
        device = self.replicas[0].device
        self.max_batch_tokens = max_batch_tokens or default_max_batch_tokens(device)
        self.on_progress = on_progress
        self.stats = EmbedStats(busy_s={self._label(i): 0.0 for i in range(len(self.replicas))})
        self._lock = threading.Lock()
        self._threads = [_DeviceThread(f"zhrag-embed-{i}") for i in range(len(self.replicas))]
        self._failed = threading.Event()

    def _label(self, i: int) -> str:
        return f"{i}:{self.replicas[i].device}"

    def close(self, wait: bool = True) -> None:
        """Stop the device threads: batches not started are dropped; ``wait`` waits for the ones running."""
        self._failed.set()
        for thread in self._threads:
            thread.stop(wait)

    def __enter__(self) -> EmbedStage:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        # A stopped command (Ctrl-C, SIGTERM: KeyboardInterrupt in the main thread) does not wait for the batch
        # in flight: the process is about to exit, and a remote server may hold it for minutes. Elsewhere (a
        # server's cancelled ingest) the batch is waited for, so that the model has one user at a time.
        stopped = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        self.close(wait=not (stopped and threading.current_thread() is threading.main_thread()))

    def submit(self, input_ids: Sequence[Sequence[int]] | None, texts: Sequence[str]) -> Future[np.ndarray]:
        """Start embedding one shard; the future holds its vectors in input order.

        Args:
            input_ids: Per chunk, the model input ids (required where the embedder ``takes_token_ids``).
            texts: Per chunk, the text (used by text embedders).
        """
        vectors = np.zeros((len(texts), self.embedder.dim), dtype=np.float32)
        if self.tokenised:
            if input_ids is None:
                raise ValueError("a tokenised embedding stage needs input ids")
            lengths = [len(ids) for ids in input_ids]
            plan = plan_batches(lengths, self.max_batch_tokens, MAX_BATCH_SIZE)
            with self._lock:
                self.stats.tokens += plan.tokens
                self.stats.padded += plan.padded
                self.stats.batches += len(plan.batches)
            jobs = [(batch, [input_ids[i] for i in batch]) for batch in plan.batches]
            cost = [len(b) * lengths[b[0]] for b in plan.batches]  # a batch's first is its longest
        else:
            order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
            batches = [order[i : i + TEXT_BATCH] for i in range(0, len(order), TEXT_BATCH)]
            jobs = [(batch, [texts[i] for i in batch]) for batch in batches]
            cost = [sum(len(texts[i]) for i in batch) for batch in batches]
            with self._lock:
                self.stats.batches += len(batches)
        shares = _balance(cost, len(self.replicas))
        futures = [
            self._threads[d].submit(partial(self._run, d, [jobs[j] for j in share], vectors))
            for d, share in enumerate(shares)
            if share
        ]
        return _gather(futures, vectors)

    def _run(self, device: int, jobs: list[tuple[list[int], list[Any]]], out: np.ndarray) -> None:
        replica = self.replicas[device]
        for positions, batch in jobs:
            if self._failed.is_set():
                raise RuntimeError("embedding stopped")
            start = time.perf_counter()
            try:
                if self.tokenised:
                    out[positions] = replica.embed_token_ids(batch)
                else:
                    out[positions] = replica.embed_documents(batch)
            except BaseException:
                self._failed.set()
                raise
            elapsed = time.perf_counter() - start
            with self._lock:
                self.stats.busy_s[self._label(device)] += elapsed
            if self.on_progress:
                self.on_progress(len(positions))


def _balance(cost: Sequence[int], devices: int) -> list[list[int]]:
    """Assign batches (costliest first) to the least-loaded device; deterministic for given costs."""
    shares: list[list[int]] = [[] for _ in range(devices)]
    load = [0] * devices
    for j in sorted(range(len(cost)), key=lambda j: -cost[j]):
        d = min(range(devices), key=lambda d: (load[d], d))
        shares[d].append(j)
        load[d] += cost[j]
    for share in shares:
        share.sort()
    return shares


def _gather(futures: list[Future[None]], vectors: np.ndarray) -> Future[np.ndarray]:
    """One future that completes with ``vectors`` when every device's part is done (or with the first error)."""
    done: Future[np.ndarray] = Future()
    remaining = [len(futures)]
    lock = threading.Lock()
    if not futures:
        done.set_result(vectors)
        return done

    def finished(f: Future[None]) -> None:
        with lock:
            if done.done():
                return
            if f.cancelled():
                done.cancel()
                return
            if f.exception() is not None:
                done.set_exception(f.exception())  # type: ignore[arg-type]
                return
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set_result(vectors)

    for f in futures:
        f.add_done_callback(finished)
    return done
