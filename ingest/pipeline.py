"""The ingestion pipeline: discover -> load -> normalise -> chunk -> embed -> index (atomically)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ingest.chunkers import ChunkSettings, LengthFn, chunk_document
from ingest.document import Document, LoadError
from ingest.loaders import discover, load_file
from retrieval.embedders import Embedder
from retrieval.index import IndexWriter
from retrieval.text import Analyzer, normalize_text
from retrieval.types import Chunk

__all__ = ["IngestSummary", "ingest", "length_function", "EMBED_BATCH"]

log = logging.getLogger(__name__)

EMBED_BATCH = 64
"""Chunks per embedding call (the progress bar advances per call)."""


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
    files: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    chunkers: dict[str, int] = field(default_factory=dict)
    model: str = ""
    version: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dataclasses.asdict(self)


def length_function(embedder: Embedder) -> LengthFn:
    """Token length in the embedder's tokenizer (no special tokens); a char count for remote models."""
    tokenizer = getattr(embedder, "tokenizer", None)
    if tokenizer is not None:
        return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return lambda text: embedder.count_tokens([text])[0]


def _content_hash(doc: Document, settings: ChunkSettings) -> str:
    payload = json.dumps([doc.text, doc.title, doc.metadata, settings.to_dict()], ensure_ascii=False, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="chunk", desc="embedding", disable=not enabled, dynamic_ncols=True)


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
) -> IngestSummary:
    """Ingest files/directories into the index at ``index_dir`` (created or updated).

    Unchanged documents (same id and content) are skipped; changed ones replace their old chunks.
    Unreadable files are reported in ``skipped`` and never abort the run. Nothing is published
    unless the whole run succeeds: on any exception the previous index version keeps serving.

    Args:
        paths: Files or directories (recursive).
        index_dir: Index directory.
        embedder: Document embedder (must match the one an existing index was built with).
        analyzer: BM25 analyzer.
        settings: Chunk sizes and chunker choice.
        store: Vector store backend for a new index, e.g. ``{"backend": "faiss", "kind": "flat"}``.
        progress: Show a progress bar on stderr.
        on_skip: Called with (path, reason) for each skipped file.
        prune: Remove indexed documents that this run did not see (the index mirrors ``paths``).
            Documents of files that failed to load are kept, so a broken file never erases its
            last good version.

    Returns:
        The run summary.
    """
    start = time.perf_counter()
    settings = settings or ChunkSettings()
    summary = IngestSummary(index=str(index_dir), model=embedder.name)
    files, skipped = discover(paths)
    summary.files = len(files)

    def skip(path: str, reason: str) -> None:
        summary.skipped.append({"path": path, "reason": reason})
        log.warning("skipped %s: %s", path, reason)
        if on_skip:
            on_skip(path, reason)

    for path, reason in skipped:
        skip(path, reason)
    length = length_function(embedder)
    manifest_extra = {
        "chunker": settings.to_dict(),
        "analyzer": analyzer.config(),
        "instruction": getattr(embedder, "instruction", None),
    }
    with IndexWriter(index_dir, embedder.describe(), store=store, settings=manifest_extra) as writer:
        pending: dict[str, tuple[Document, str, list[Chunk]]] = {}
        chunkers: Counter[str] = Counter()
        seen: set[str] = set()
        for path, doc_base in files:
            try:
                documents = list(load_file(path, doc_base))
            except LoadError as exc:
                skip(str(path), str(exc).removeprefix(f"{path}: "))
                continue
            for doc in documents:
                summary.documents += 1
                doc = dataclasses.replace(doc, text=normalize_text(doc.text), title=normalize_text(doc.title))
                if doc.id in seen:
                    skip(doc.source, f"duplicate document id {doc.id!r}; the later one replaces the earlier")
                seen.add(doc.id)
                digest = _content_hash(doc, settings)
                if writer.document_hash(doc.id) == digest:
                    summary.documents_unchanged += 1
                    continue
                name, chunks = chunk_document(doc, settings, length)
                if not chunks:
                    skip(doc.source, "no text to index")
                    continue
                chunkers[name] += 1
                pending.pop(doc.id, None)  # a duplicate id: the later document replaces the earlier
                pending[doc.id] = (doc, digest, chunks)
        summary.chunkers = dict(chunkers)
        new_chunks = [c for _, _, cs in pending.values() for c in cs]
        vectors, tokens = _embed_all(new_chunks, embedder, analyzer, progress)
        offset = 0
        for doc, digest, chunks in pending.values():
            n = len(chunks)
            writer.add_document(
                doc.id, doc.source, digest, chunks, vectors[offset : offset + n], tokens[offset : offset + n]
            )
            offset += n
            summary.chunks += n
        summary.documents_indexed = len(pending)
        if prune:
            failed = {Path(s["path"]) for s in summary.skipped}
            keep = seen | {doc_base for path, doc_base in files if path in failed}
            for doc_id in writer.document_ids():
                if doc_id not in keep:
                    writer.delete_document(doc_id)
                    summary.documents_removed += 1
        if new_chunks:
            summary.tokens = int(sum(embedder.count_tokens([c.embed_text for c in new_chunks])))
        if writer.changed or not writer.base_version:
            summary.version = writer.commit()
        else:  # nothing new: keep the live version rather than publishing an identical copy
            summary.version = writer.base_version
            writer.abort()
        summary.total_chunks = writer.docs_count()
        summary.total_documents = writer.documents_count()
    summary.seconds = round(time.perf_counter() - start, 2)
    summary.chunks_per_second = round(summary.chunks / summary.seconds, 1) if summary.seconds else 0.0
    return summary


def _embed_all(
    chunks: Sequence[Chunk], embedder: Embedder, analyzer: Analyzer, progress: bool
) -> tuple[np.ndarray, list[list[str]]]:
    """Embed chunks longest-first in batches (less padding), returning vectors in the input order.

    BM25 tokenisation (jieba, pure Python) runs in a background thread meanwhile: the model releases the
    GIL while it computes, so the two overlap instead of adding up.
    """
    texts = [c.embed_text for c in chunks]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    vectors = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    stop = threading.Event()

    def tokenize() -> list[list[str]]:
        out = []
        for text in texts:
            if stop.is_set():  # embedding failed: don't keep the caller waiting for the rest
                break
            out.append(analyzer(text))
        return out

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="zhrag-bm25") as pool:
        tokens = pool.submit(tokenize)
        try:
            with _progress(len(texts), progress) as bar:
                for i in range(0, len(order), EMBED_BATCH):
                    idx = order[i : i + EMBED_BATCH]
                    vectors[idx] = embedder.embed_documents([texts[j] for j in idx])
                    bar.update(len(idx))
        except BaseException:
            stop.set()
            raise
        return vectors, tokens.result()
