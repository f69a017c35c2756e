"""The CPU stages of ingest, per file: load -> normalise -> hash -> chunk -> tokenise (model ids and BM25 terms).

:func:`prepare` is a pure function of its task and a :class:`StageContext`, so it runs the same in the
main process (``--workers 1``) or in worker processes; :func:`prepared_in_order` runs it over many files
with a bounded look-ahead and yields the results in input order, which keeps indexes byte-identical
whatever the worker count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ingest.chunkers import ChunkSettings, chunk_document
from ingest.document import BadRecord, Document, LoadError, LoadWarning
from ingest.lifecycle import init_worker_signals, stop_signals_held
from ingest.limits import FileLimits, check_archive, check_document, check_file, time_limit
from ingest.loaders import ZIP_SUFFIXES, FilePart, load_file
from ingest.ocr import set_page_progress
from retrieval.bm25 import ChunkTerms
from retrieval.embedders.tokens import TokenSpec
from retrieval.text import Analyzer, normalize_text
from retrieval.types import Chunk

__all__ = [
    "StageContext",
    "FileTask",
    "PreparedDoc",
    "PreparedFile",
    "prepare",
    "prepared_in_order",
    "PageCounter",
    "default_workers",
    "content_hash",
]

log = logging.getLogger(__name__)

LOOKAHEAD_PER_WORKER = 8
"""Files (or JSONL parts) each worker may run ahead of the consumer: bounds memory, keeps workers busy."""


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class StageContext:
    """What every file's preparation needs (pickled once per worker).

    Attributes:
        settings: Chunker settings.
        analyzer: BM25 analyzer (pickles as its arguments; a worker rebuilds it).
        spec: The model's tokenizer: chunk sizes are measured in its ids, and those ids are fed to the
            model. ``None`` for remote embedders (sizes in characters, the server tokenises).
        known: Content hash per document id of the live index (unchanged documents are not chunked).
        count: Length function when there is no ``spec``: characters, which is what a remote embedding
            server's ``count_tokens`` counts too (a conservative bound for Chinese).
        limits: Per-file size, document length and time limits.
        source_names: How a file's path is recorded as its documents' ``source`` (e.g. an uploaded
            file's own name instead of the temporary file it was saved as).
    """

    settings: ChunkSettings
    analyzer: Analyzer
    spec: TokenSpec | None
    known: Mapping[str, str] = field(default_factory=dict)
    count: Callable[[str], int] = len
    limits: FileLimits = field(default_factory=FileLimits)
    source_names: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FileTask:
    """One unit of work: a file (or a part of a large JSONL file) and its document id base."""

    path: Path
    doc_base: str
    part: FilePart | None = None


@dataclass
class PreparedDoc:
    """One document after the CPU stages.

    Attributes:
        doc: The normalised document (its text is dropped once chunked, to keep results small).
        digest: Content hash (text, title, metadata, chunk settings).
        unchanged: The live index holds the same content: nothing else was computed.
        chunker: Which chunker ran.
        chunks: The chunks.
        input_ids: Per chunk, the model's input ids (``None`` without a local tokenizer).
        terms: The chunks' BM25 terms, counted.
    """

    doc: Document
    digest: str
    unchanged: bool = False
    chunker: str = ""
    chunks: list[Chunk] = field(default_factory=list)
    input_ids: list[np.ndarray] | None = None
    terms: ChunkTerms | None = None


@dataclass
class PreparedFile:
    """A task's result: its documents, the records it had to skip, or the reason it could not be read."""

    task: FileTask
    docs: list[PreparedDoc] = field(default_factory=list)
    bad_records: list[BadRecord] = field(default_factory=list)
    warnings: list[LoadWarning] = field(default_factory=list)
    error: str | None = None


def content_hash(doc: Document, settings: ChunkSettings) -> str:
    """Hash of what determines a document's chunks: re-ingesting the same content is a no-op."""
    fields: list[object] = [doc.text, doc.title, doc.metadata, settings.to_dict()]
    if doc.pages:  # where pages start decides chunks' page metadata (absent: the hash of earlier versions)
        fields.append([dataclasses.astuple(p) for p in doc.pages])
    payload = json.dumps(fields, ensure_ascii=False, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()


class _TokenMemo:
    """Chunk-size measurement that remembers the ids, so each final chunk text is tokenised once."""

    def __init__(self, spec: TokenSpec) -> None:
        self.spec = spec
        self.memo: dict[str, list[int]] = {}

    def __call__(self, text: str) -> int:
        return len(self.ids(text))

    def ids(self, text: str) -> list[int]:
        ids = self.memo.get(text)
        if ids is None:
            ids = self.memo[text] = self.spec.encode(text)
        return ids


def _prepare_doc(doc: Document, context: StageContext) -> PreparedDoc:
    doc = dataclasses.replace(doc, text=normalize_text(doc.text), title=normalize_text(doc.title))
    digest = content_hash(doc, context.settings)
    if context.known.get(doc.id) == digest:
        return PreparedDoc(dataclasses.replace(doc, text=""), digest, unchanged=True)
    memo = _TokenMemo(context.spec) if context.spec is not None else None
    name, chunks = chunk_document(doc, context.settings, memo or context.count)
    input_ids = None
    if memo is not None:
        spec = memo.spec
        input_ids = [np.asarray(spec.model_input(memo.ids(c.embed_text)), dtype=np.int32) for c in chunks]
    terms = ChunkTerms.count([context.analyzer(c.embed_text) for c in chunks])
    return PreparedDoc(dataclasses.replace(doc, text=""), digest, False, name, chunks, input_ids, terms)


def prepare(task: FileTask, context: StageContext) -> PreparedFile:
    """Load, normalise, hash, chunk and tokenise one file (or JSONL part); never raises for bad input.

    A file over a limit of ``context.limits`` is reported like an unreadable one; a JSONL record over
    the document length limit is skipped alone.
    """
    result = PreparedFile(task)
    limits = context.limits
    try:
        with time_limit(limits.max_seconds, str(task.path)):
            check_file(task.path, limits, whole=task.part is None)
            if task.path.suffix.lower() in ZIP_SUFFIXES:
                check_archive(task.path, limits)
            for item in load_file(task.path, task.doc_base, task.part):
                if isinstance(item, BadRecord):
                    result.bad_records.append(item)
                elif isinstance(item, LoadWarning):
                    result.warnings.append(item)
                elif item.format == "jsonl" and len(item.text) > limits.max_doc_chars:
                    try:
                        check_document(item.text, item.source, limits)
                    except LoadError as exc:
                        result.bad_records.append(BadRecord(str(task.path), str(exc)))
                else:
                    check_document(item.text, str(task.path), limits)
                    shown = context.source_names.get(str(task.path))
                    if shown is not None:
                        item = dataclasses.replace(item, source=item.source.replace(str(task.path), shown, 1))
                    result.docs.append(_prepare_doc(item, context))
    except LoadError as exc:
        result.docs, result.error = [], str(exc).removeprefix(f"{task.path}: ")
    return result


_CONTEXT: StageContext | None = None


class PageCounter:
    """Pages queued for and done by OCR, counted across worker processes (shared memory) for a progress bar."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context(_start_method())
        self._done = ctx.Value("q", 0)
        self._total = ctx.Value("q", 0)

    def add(self, done: int = 0, total: int = 0) -> None:
        """Count ``done`` more pages finished and ``total`` more queued."""
        with self._done.get_lock():
            self._done.value += done
            self._total.value += total

    @property
    def counts(self) -> tuple[int, int]:
        """(done, total)."""
        with self._done.get_lock():
            return self._done.value, self._total.value


_CANCEL_POLL_S = 0.2
_ABANDON_WAIT_S = 10.0
"""How long an abandoned pool's thread may take to reap its killed workers."""


def _init_worker(context: StageContext, pages: PageCounter | None = None, parent: int | None = None) -> None:
    global _CONTEXT
    _CONTEXT = context
    init_worker_signals(parent)
    set_page_progress(pages.add if pages is not None else None)


def _prepare_in_worker(task: FileTask) -> PreparedFile:
    assert _CONTEXT is not None, "worker not initialised"
    return prepare(task, _CONTEXT)


def _start_method() -> str:
    # fork starts in milliseconds and inherits jieba's loaded dictionaries; workers never touch torch.
    # Elsewhere (macOS, Windows) spawn is the safe choice.
    return "fork" if sys.platform == "linux" else "spawn"


def prepared_in_order(
    tasks: Iterable[FileTask],
    context: StageContext,
    workers: int = 1,
    pages: PageCounter | None = None,
    isolated: bool = False,
    cancel: threading.Event | None = None,
) -> Iterator[PreparedFile]:
    """:func:`prepare` over ``tasks``, yielded in input order.

    ``workers <= 1`` runs in this process. More workers run as processes with a bounded look-ahead
    (``LOOKAHEAD_PER_WORKER`` tasks each), so a slow consumer (the model) holds back the producers
    instead of letting results pile up in memory. ``pages`` counts the OCR pages of every process.
    ``isolated`` runs even one worker as a process, started fresh (``spawn``): what a server does, so a
    file's time limit applies (it needs a main thread) and a runaway file's memory is not the server's; a set
    ``cancel`` then ends the workers at once (KeyboardInterrupt here) instead of after the file in hand.
    """
    if isolated:
        spawn = multiprocessing.get_context("spawn")
        yield from _in_processes(tasks, context, max(1, workers), None, spawn, cancel)
        return
    if workers <= 1:
        set_page_progress(pages.add if pages is not None else None)
        try:
            for task in tasks:
                yield prepare(task, context)
        finally:
            set_page_progress(None)
        return
    context.analyzer.warm_up()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked children: no Rust thread pools
    yield from _in_processes(tasks, context, workers, pages, multiprocessing.get_context(_start_method()))


def _result_unless_cancelled(future: Future[PreparedFile], cancel: threading.Event | None) -> PreparedFile:
    """The file's result; on ``cancel``, the wait ends (the caller abandons the pool)."""
    if cancel is None:
        return future.result()
    while not future.done():
        if cancel.is_set():
            raise KeyboardInterrupt
        wait([future], timeout=_CANCEL_POLL_S)
    return future.result()


def _abandon(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's workers (they write nothing), then give its manager thread a bounded time to see them
    gone and reap them.

    A worker killed while it sends a result (SIGTERM reaches the whole process group) can leave a partial
    message in the result pipe, and the manager thread then waits forever to read the rest: waiting for it
    without a bound hung an interrupted ingest (seen once in about twenty runs). After the bound the command
    leaves with ``os._exit``, so nothing joins that thread afterwards."""
    manager = pool._executor_manager_thread  # CPython's pool keeps its thread and workers there
    for process in list((pool._processes or {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    if manager is not None and manager.is_alive():
        manager.join(_ABANDON_WAIT_S)
        if manager.is_alive():
            log.warning("a killed ingest worker left its result half-written; not waiting for the pool's thread")


def _in_processes(
    tasks: Iterable[FileTask],
    context: StageContext,
    workers: int,
    pages: PageCounter | None,
    mp: Any,
    cancel: threading.Event | None = None,
) -> Iterator[PreparedFile]:
    pool = ProcessPoolExecutor(workers, mp_context=mp, initializer=_init_worker, initargs=(context, pages, os.getpid()))
    pending: deque[Future[PreparedFile]] = deque()
    todo = iter(tasks)

    def submit(task: FileTask) -> None:
        with stop_signals_held():  # a submit may fork workers and start the pool's thread
            pending.append(pool.submit(_prepare_in_worker, task))

    try:
        for task in todo:
            submit(task)
            if len(pending) >= workers * LOOKAHEAD_PER_WORKER:
                break
        while pending:
            result = _result_unless_cancelled(pending.popleft(), cancel)
            task = next(todo, None)
            if task is not None:
                submit(task)
            yield result
    except BaseException:  # an interrupt, a cancel, the consumer's error or its early close
        _abandon(pool)
        raise
    pool.shutdown(wait=True)
