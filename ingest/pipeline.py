"""The ingestion pipeline: discover -> [load -> normalise -> chunk -> tokenise] x workers -> embed -> index.

The CPU stages run in worker processes (:mod:`ingest.stages`) and stream, in file order, into shards of
chunks. Each shard is embedded on the device threads (:mod:`ingest.embedding`) while the next shard is
being prepared and the previous one is written, so the model is never waiting on one CPU thread and
vectors never pile up until the end. Nothing is published unless the whole run succeeds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ingest.chunkers import ChunkSettings
from ingest.document import Document
from ingest.embedding import EmbedStage
from ingest.limits import FileLimits
from ingest.loaders import SUPPORTED_SUFFIXES, discover, file_parts
from ingest.stages import FileTask, PageCounter, PreparedDoc, PreparedFile, StageContext, prepared_in_order
from retrieval.errors import UserError
from retrieval.index import IndexWriter, current_version, read_manifest
from retrieval.protocols import Embedder
from retrieval.text import Analyzer

__all__ = [
    "IngestSummary",
    "IngestOptions",
    "NothingToIngest",
    "IngestRejected",
    "RemovalSummary",
    "ingest",
    "create_index",
    "remove_documents",
    "SHARD_CHUNKS",
    "RunRecord",
    "ShardWriter",
    "prune_unseen",
    "publish_or_keep",
]

log = logging.getLogger(__name__)

SHARD_CHUNKS = 8192
"""Chunks embedded and written together: bounds memory, and is the window batches are length-sorted in."""


class NothingToIngest(UserError, ValueError):
    """No file under the given paths could be read: nothing is written."""


class IngestRejected(UserError, ValueError):
    """An all-or-nothing ingest skipped something, so nothing was published.

    Attributes:
        skipped: ``{"path", "reason"}`` of every file or record that could not be used.
    """

    def __init__(self, skipped: list[dict[str, str]]) -> None:
        self.skipped = list(skipped)
        first = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3])
        super().__init__(f"nothing was published: {len(skipped)} file(s) or record(s) could not be used ({first})")


@dataclass
class RemovalSummary:
    """What :func:`remove_documents` did."""

    version: str
    removed: list[str]
    missing: list[str]
    chunks_removed: int


def remove_documents(
    index_dir: Path | str, doc_ids: Sequence[str], connection: Mapping[str, str] | None = None
) -> RemovalSummary:
    """Delete documents from an index and publish the result as a new version (nothing to delete: no version).

    Raises:
        ZhragIndexError: no index at ``index_dir``; IndexLockedError: another writer holds the index.
    """
    manifest = read_manifest(Path(index_dir))
    removed: list[str] = []
    missing: list[str] = []
    chunks = 0
    with IndexWriter(index_dir, manifest["embedder"], connection=connection) as writer:
        for doc_id in dict.fromkeys(doc_ids):
            if writer.document_hash(doc_id) is not None:
                chunks += writer.delete_document(doc_id)
                removed.append(doc_id)
            else:
                missing.append(doc_id)
        if removed:
            version = writer.commit()
        else:
            version = writer.base_version
            writer.abort()
    return RemovalSummary(version, removed, missing, chunks)


def _nothing(paths: list[str], skipped: list[dict[str, str]]) -> NothingToIngest:
    reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5])
    more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
    if not skipped:
        reasons = f"no {', '.join(SUPPORTED_SUFFIXES)} files under {', '.join(paths)}"
    return NothingToIngest(f"nothing to ingest, the index was not changed: {reasons}{more}")


@dataclass(frozen=True)
class IngestOptions:
    """How an ingest run uses the machine.

    Workers and devices never change the index written (byte for byte). The batch budget and the
    shard size decide which chunks share a forward pass, which can move vectors by float rounding.

    Attributes:
        workers: Processes for the CPU stages; 1 runs them in this process.
        devices: One model replica per device (e.g. ``["cuda:0", "cuda:1"]``); ``None`` = the embedder's.
        max_batch_tokens: Padded positions per embedding batch (default by device kind).
        shard_chunks: Chunks per shard.
        cancel: When set, the run stops after the file in hand (as if interrupted) and publishes nothing.
        limits: Per-file size, document length and time limits (a file over one is skipped and reported).
        all_or_nothing: Publish nothing when any file or record is skipped (:class:`IngestRejected`).
        source_names: How a file's path is recorded as its documents' ``source`` (path -> name).
        connection: The store's connection secrets (a Milvus ``token``), never written to the index.
        isolated: Prepare files in a freshly started worker process even with one worker (a server: the
            per-file time limit applies and a runaway file's memory stays outside it).
    """

    workers: int = 1
    devices: Sequence[str] | None = None
    max_batch_tokens: int | None = None
    shard_chunks: int = SHARD_CHUNKS
    cancel: threading.Event | None = None
    limits: FileLimits = field(default_factory=FileLimits)
    all_or_nothing: bool = False
    source_names: Mapping[str, str] = field(default_factory=dict)
    isolated: bool = False
    connection: Mapping[str, str] = field(default_factory=dict)


@dataclass
class IngestSummary:
    """What an ingest run did (``zhrag ingest --json`` prints it)."""

    index: str
    documents: int = 0
    documents_indexed: int = 0
    documents_unchanged: int = 0
    documents_removed: int = 0
    chunks: int = 0
    total_chunks: int = 0
    total_documents: int = 0
    tokens: int = 0
    seconds: float = 0.0
    chunks_per_second: float = 0.0
    tokens_per_second: float = 0.0
    """Tokens of the new chunks over the whole run's wall time."""
    embed_seconds: float = 0.0
    """Time the (busiest) device spent in forward passes."""
    embed_tokens_per_second: float = 0.0
    padding_ratio: float = 0.0
    """Share of the positions the model computed that were padding."""
    batches: int = 0
    max_batch_tokens: int = 0
    workers: int = 1
    devices: list[str] = field(default_factory=list)
    files: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    """Repairs that kept a file (e.g. undecodable bytes replaced)."""
    ocr_pages: int = 0
    """Scanned pages and images read through OCR."""
    ocr_confidence: float | None = None
    """Mean OCR confidence over those pages (0..1)."""
    chunkers: dict[str, int] = field(default_factory=dict)
    model: str = ""
    version: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dataclasses.asdict(self)


@dataclass
class _Shard:
    docs: list[PreparedDoc] = field(default_factory=list)
    chunks: int = 0

    def texts(self) -> list[str]:
        return [c.embed_text for d in self.docs for c in d.chunks]

    def input_ids(self) -> list[np.ndarray] | None:
        if any(d.input_ids is None for d in self.docs):
            return None
        return [ids for d in self.docs for ids in d.input_ids or []]


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="file", desc="ingest", disable=not enabled, dynamic_ncols=True)


def _embed_progress(enabled: bool):
    """Chunks through the model, out of those handed to it so far (the total grows shard by shard): one big
    JSONL corpus is one file, so the file bar alone would sit still while all its chunks are embedded."""
    from tqdm.auto import tqdm

    return tqdm(total=0, unit="chunk", desc="embed", disable=not enabled, dynamic_ncols=True, position=1)


def _manifest_extra(
    settings: ChunkSettings, analyzer: Analyzer, embedder: Embedder, domain: str | None
) -> dict[str, Any]:
    """What a version's manifest records beside the embedder and the store."""
    return {
        "chunker": settings.to_dict(),
        "analyzer": analyzer.config(),
        "instruction": embedder.instruction,
        **({"domain": domain} if domain else {}),  # an update without one keeps the recorded domain
    }


def create_index(
    index_dir: Path | str,
    embedder: Embedder,
    analyzer: Analyzer,
    settings: ChunkSettings | None = None,
    store: dict[str, Any] | None = None,
    domain: str | None = None,
    connection: Mapping[str, str] | None = None,
) -> str:
    """Publish an empty first version at ``index_dir`` (a knowledge base to fill later); returns its version.

    Raises:
        FileExistsError: an index is already there.
    """
    if current_version(index_dir) is not None:
        raise FileExistsError(f"{index_dir} already holds an index")
    extra = _manifest_extra(settings or ChunkSettings(), analyzer, embedder, domain)
    with IndexWriter(index_dir, embedder.describe(), store=store, settings=extra, connection=connection) as writer:
        return writer.commit()


def ingest(
    paths: Iterable[Path | str],
    index_dir: Path | str,
    embedder: Embedder,
    analyzer: Analyzer,
    settings: ChunkSettings | None = None,
    store: dict[str, Any] | None = None,
    progress: bool = True,
    on_skip: Callable[[str, str], None] | None = None,
    prune: bool = False,
    options: IngestOptions | None = None,
    domain: str | None = None,
) -> IngestSummary:
    """Ingest files/directories into the index at ``index_dir`` (created or updated).

    Unchanged documents (same id and content) are skipped; changed ones replace their old chunks. Unreadable
    files and bad JSONL records are reported in ``skipped`` and never abort the run. Nothing is published
    unless the whole run succeeds: on any exception the previous version keeps serving. The index written
    does not depend on ``options`` (workers, devices, batch budget).

    Args:
        paths: Files or directories (recursive).
        index_dir: Index directory.
        embedder: Document embedder (must match the one an existing index was built with).
        analyzer: BM25 analyzer.
        settings: Chunk sizes and chunker choice.
        store: Vector store backend for a new index, e.g. ``{"backend": "faiss", "kind": "flat"}``.
        progress: Show a progress bar on stderr.
        on_skip: Called with (path, reason) for each skipped file or record.
        prune: Remove indexed documents that this run did not see (the index mirrors ``paths``); those of
            files that failed to load are kept, so a broken file never erases its last good version.
        options: Workers, devices and batching.
        domain: What the documents are about (``legal``, ``medical``, ``general``), recorded in the manifest:
            query-time behaviour that depends on it (query synonyms, multi-turn turn weights) follows it.

    Returns:
        The run summary.

    Raises:
        NothingToIngest: no document could be read from ``paths``; the index is left as it was.
    """
    start = time.perf_counter()
    paths = list(paths)
    settings = settings or ChunkSettings()
    options = options or IngestOptions()
    summary = IngestSummary(index=str(index_dir), model=embedder.name, workers=max(1, options.workers))
    record = RunRecord(summary, on_skip)
    names = [str(p) for p in paths]
    files, tasks = _discover_tasks(paths, record)
    # Chunk sizes are measured in the model's tokens wherever a tokenizer exists (also behind an embedding
    # cache); whether the ids are fed to the model is the embedding stage's call.
    manifest_extra = _manifest_extra(settings, analyzer, embedder, domain)
    replicas = _replicas(embedder, options.devices)
    summary.devices = [r.device for r in replicas]
    with (
        IndexWriter(
            index_dir, embedder.describe(), store=store, settings=manifest_extra, connection=options.connection
        ) as writer,
        _progress(len(tasks), progress) as bar,
        ShardWriter(writer, embedder, replicas, options, summary, progress) as shards,
    ):
        known, limits, names_of = writer.hash_lookup(), options.limits, options.source_names
        context = StageContext(settings, analyzer, embedder.token_spec, known, limits=limits, source_names=names_of)
        _chunk_and_embed(tasks, context, options, record, shards, embedder, progress, bar)
        if options.all_or_nothing and summary.skipped:
            raise IngestRejected(summary.skipped)
        if not record.seen:
            raise _nothing(names, summary.skipped)
        record.close(indexed=shards.indexed)
        if prune:
            failed = {base for p, base in files if p in record.failed}
            summary.documents_removed = prune_unseen(writer, record.seen, failed)
        summary.version = publish_or_keep(writer)
        summary.total_chunks = writer.chunks_count()
        summary.total_documents = writer.documents_count()
        _record_throughput(summary, shards.stage)
    summary.seconds = round(time.perf_counter() - start, 2)
    summary.chunks_per_second = round(summary.chunks / summary.seconds, 1) if summary.seconds else 0.0
    summary.tokens_per_second = round(summary.tokens / summary.seconds, 1) if summary.seconds else 0.0
    return summary


def _discover_tasks(paths: list[Path | str], record: RunRecord) -> tuple[list[tuple[Path, str]], list[FileTask]]:
    """The files under ``paths`` (what cannot be read is recorded as skipped) and their load tasks.

    Raises:
        NothingToIngest: no file to read.
    """
    files, skipped = discover(paths)
    record.summary.files = len(files)
    for path, reason in skipped:
        record.skip(path, reason)
    if not files:
        raise _nothing([str(p) for p in paths], record.summary.skipped)
    return files, [FileTask(path, base, part) for path, base in files for part in file_parts(path)]


def _chunk_and_embed(
    tasks: list[FileTask],
    context: StageContext,
    options: IngestOptions,
    record: RunRecord,
    shards: ShardWriter,
    embedder: Embedder,
    progress: bool,
    bar: Any,
) -> None:
    """Load and chunk the files in worker processes, in order, and embed their new documents shard by shard."""
    pages = PageCounter()
    workers = record.summary.workers
    with (
        _ocr_progress(pages, progress),
        contextlib.closing(
            prepared_in_order(tasks, context, workers, pages, isolated=options.isolated, cancel=options.cancel)
        ) as results,
    ):
        for result in results:
            _check_cancel(options)
            bar.update(1)
            for doc in record.take(result, lambda d: _count_tokens(d, embedder)):
                shards.add(doc)
    shards.finish()
    _check_cancel(options)


def _check_cancel(options: IngestOptions) -> None:
    if options.cancel is not None and options.cancel.is_set():
        raise KeyboardInterrupt


class RunRecord:
    """What one ingest run saw, besides the documents it embeds: skipped files and records (also logged and
    passed to ``on_skip``), warnings, duplicates, unchanged and empty documents, chunkers and OCR pages, all
    counted into ``summary``."""

    def __init__(self, summary: IngestSummary, on_skip: Callable[[str, str], None] | None = None) -> None:
        self.summary, self.on_skip = summary, on_skip
        self.seen: set[str] = set()
        self.failed: set[Path] = set()
        self._chunkers: Counter[str] = Counter()
        self._ocr = _OcrTally()

    def skip(self, path: str, reason: str) -> None:
        """Record a skipped file or record."""
        self.summary.skipped.append({"path": path, "reason": reason})
        log.warning("skipped %s: %s", path, reason)
        if self.on_skip:
            self.on_skip(path, reason)

    def take(self, result: PreparedFile, count_tokens: Callable[[PreparedDoc], int]) -> list[PreparedDoc]:
        """Record one file's outcome; its documents to embed and write (new or changed, with text)."""
        if result.error is not None:
            self.skip(str(result.task.path), result.error)
            self.failed.add(result.task.path)
            return []
        for bad in result.bad_records:
            self.skip(bad.path, bad.reason)
        for warning in result.warnings:
            self.summary.warnings.append({"path": warning.path, "reason": warning.reason})
            log.warning("%s", warning.reason)
        wanted = []
        for d in result.docs:
            self._ocr.add(d.doc)
            self.summary.documents += 1
            if d.doc.id in self.seen:
                self.skip(d.doc.source, f"duplicate document id {d.doc.id!r}; the later one replaces the earlier")
            self.seen.add(d.doc.id)
            if d.unchanged:
                self.summary.documents_unchanged += 1
            elif not d.chunks:
                self.skip(d.doc.source, "no text to index")
            else:
                self._chunkers[d.chunker] += 1
                self.summary.tokens += count_tokens(d)
                wanted.append(d)
        return wanted

    def close(self, indexed: set[str]) -> None:
        """Fill the summary's totals once every file was taken."""
        self.summary.chunkers = dict(self._chunkers)
        self.summary.ocr_pages, self.summary.ocr_confidence = self._ocr.pages, self._ocr.mean()
        self.summary.documents_indexed = len(indexed)


class ShardWriter:
    """Documents gathered into shards of about ``options.shard_chunks`` chunks, each embedded on the devices
    while the previous one is written into the index (so the model never waits for the writer)."""

    def __init__(
        self,
        writer: IndexWriter,
        embedder: Embedder,
        replicas: list[Embedder],
        options: IngestOptions,
        summary: IngestSummary,
        progress: bool,
    ) -> None:
        self.writer, self.options, self.summary = writer, options, summary
        self.indexed: set[str] = set()
        self._progress = progress
        self._embedder, self._replicas = embedder, replicas
        self._lock = threading.Lock()
        self._shard = _Shard()
        self._inflight: tuple[_Shard, Future[np.ndarray]] | None = None

    def __enter__(self) -> ShardWriter:
        self._stack = contextlib.ExitStack()
        self._bar = self._stack.enter_context(_embed_progress(self._progress))
        stage = EmbedStage(self._embedder, self._replicas, self.options.max_batch_tokens, on_progress=self._embedded)
        self.stage = self._stack.enter_context(stage)
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        return self._stack.__exit__(*exc)

    def _embedded(self, chunks: int) -> None:  # from the device threads
        with self._lock:
            self._bar.update(chunks)

    def add(self, doc: PreparedDoc) -> None:
        """Queue a document; a full shard goes to the devices."""
        self._shard.docs.append(doc)
        self._shard.chunks += len(doc.chunks)
        if self._shard.chunks >= self.options.shard_chunks:
            self._rotate(self._shard)
            self._shard = _Shard()

    def finish(self) -> None:
        """Embed and write what is left."""
        self._rotate(self._shard)
        self._shard = _Shard()
        self._rotate(None)

    def _rotate(self, full: _Shard | None) -> None:
        _check_cancel(self.options)  # between shards too, not only files
        submitted = None
        if full and full.docs:
            with self._lock:
                self._bar.total += full.chunks
                self._bar.refresh()
            submitted = (full, self.stage.submit(full.input_ids(), full.texts()))
        self._write(self._inflight)  # the device works on the new shard while the previous one is written
        self._inflight = submitted

    def _write(self, done: tuple[_Shard, Future[np.ndarray]] | None) -> None:
        if done is None:
            return
        written, future = done
        vectors = future.result()
        offset = 0
        for d in written.docs:
            n = len(d.chunks)
            self.writer.add_document(d.doc.id, d.doc.source, d.digest, d.chunks, vectors[offset : offset + n], d.terms)
            self.indexed.add(d.doc.id)
            offset += n
        self.summary.chunks += written.chunks


def prune_unseen(writer: IndexWriter, seen: set[str], kept_bases: set[str]) -> int:
    """Delete the indexed documents a mirroring run did not see, except those of files that failed to load
    (``kept_bases``: a broken file never erases its last good version; a workbook's sheets are
    ``<file>#<sheet>``); how many were deleted."""
    removed = 0
    for doc_id in writer.document_ids():
        if doc_id not in seen and doc_id not in kept_bases and doc_id.split("#", 1)[0] not in kept_bases:
            writer.delete_document(doc_id)
            removed += 1
    return removed


def publish_or_keep(writer: IndexWriter) -> str:
    """Publish what the writer staged, or — nothing changed in an existing index — keep the live version
    rather than publish an identical copy; the version that is live afterwards."""
    if writer.changed or not writer.base_version:
        return writer.commit()
    writer.abort()
    return writer.base_version


@dataclass
class _OcrTally:
    pages: int = 0
    scored: list[float] = field(default_factory=list)

    def add(self, doc: Document) -> None:
        for page in doc.pages or []:
            if page.ocr:
                self.pages += 1
                if page.confidence is not None:
                    self.scored.append(page.confidence)

    def mean(self) -> float | None:
        return round(sum(self.scored) / len(self.scored), 4) if self.scored else None


@contextlib.contextmanager
def _ocr_progress(pages: PageCounter, enabled: bool, every: float = 0.5) -> Iterator[None]:
    """An ``ocr`` bar (pages done / pages queued) that appears once a file needs OCR: a scanned book is one
    file, so the file bar alone would sit still for minutes. Polled from the workers' shared counters."""
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    stop = threading.Event()
    bar = None

    def poll() -> None:
        nonlocal bar
        while not stop.wait(every):
            done, total = pages.counts
            if total and bar is None:
                bar = tqdm(total=total, unit="page", desc="ocr", dynamic_ncols=True, position=2)
            if bar is not None:
                bar.total, bar.n = total, done
                bar.refresh()

    thread = threading.Thread(target=poll, name="zhrag-ocr-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if bar is not None:
            bar.total, bar.n = pages.counts[1], pages.counts[0]
            bar.close()


def _count_tokens(doc: PreparedDoc, embedder: Embedder) -> int:
    """Tokens the model reads for a document's chunks: its input ids, or the embedder's own count."""
    if doc.input_ids is not None:
        return sum(map(len, doc.input_ids))
    return int(sum(embedder.count_tokens([c.embed_text for c in doc.chunks])))


def _replicas(embedder: Embedder, devices: Sequence[str] | None) -> list[Embedder]:
    """One embedder per device; a remote or wrapped embedder serves as it is."""
    if not devices:
        return [embedder]
    return [embedder.on_device(d) for d in devices]


def _record_throughput(summary: IngestSummary, stage: EmbedStage) -> None:
    stats = stage.stats
    summary.embed_seconds = round(stats.seconds, 2)
    summary.batches = stats.batches
    if stage.tokenised:
        summary.padding_ratio = round(stats.padding_ratio, 4)
        summary.max_batch_tokens = stage.max_batch_tokens
    if stats.seconds:
        summary.embed_tokens_per_second = round(summary.tokens / stats.seconds, 1)
