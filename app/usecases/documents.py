"""Adding, listing and deleting the documents of a served index: every change publishes a new version.

The use cases behind ``POST/GET/DELETE /documents`` (which run the writes as jobs). An add goes through the
same pipeline as ``zhrag ingest`` (limits, loaders, chunkers, the served model) into a new version; a request
that cannot use every file or record publishes nothing. One writer at a time: a second one is a
:class:`WriterBusy`.
"""

from __future__ import annotations

import json
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.usecases.errors import Conflict, InvalidRequest, NotFound, Unavailable

if TYPE_CHECKING:
    from app.services import Services

__all__ = [
    "DocumentsChange",
    "DocumentPage",
    "DocumentRow",
    "add_documents",
    "can_add",
    "delete_documents",
    "list_documents",
    "upload_name",
    "write_text_documents",
    "NoSuchDocument",
    "WriterBusy",
    "DocumentsRejected",
    "UnsupportedFile",
    "MAX_NAME_BYTES",
    "MAX_LIST",
    "MAX_OFFSET",
]

MAX_NAME_BYTES = 200
MAX_LIST = 1000
MAX_OFFSET = 10**12
JOB_SHARD_CHUNKS = 256
"""Chunks embedded between two looks at a write's cancel."""
TEXT_DOCUMENTS = "documents.jsonl"


class NoSuchDocument(NotFound):
    """The index holds no document of that id."""


class WriterBusy(Conflict):
    """Another writer holds the index."""


class DocumentsRejected(InvalidRequest):
    """A file or record cannot be used; nothing was published."""


class UnsupportedFile(InvalidRequest):
    """A file of a type no loader reads."""


@dataclass(frozen=True)
class DocumentsChange:
    """What a change did and the version now served."""

    version: str
    total_documents: int
    total_chunks: int
    documents_indexed: int = 0
    documents_unchanged: int = 0
    documents_removed: list[str] = field(default_factory=list)
    chunks: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DocumentRow:
    """One listed document: its chunks, and its last page when the source is paged (PDF, scan)."""

    doc_id: str
    source: str
    chunks: int
    pages: int | None = None


@dataclass(frozen=True)
class DocumentPage:
    """A page of an index's documents ordered by id, and how many match in all."""

    total: int
    offset: int
    limit: int
    rows: list[DocumentRow]


def upload_name(name: str) -> str:
    """An uploaded file's name as it may be stored: its last path component, NFC, printable, not hidden,
    at most :data:`MAX_NAME_BYTES`, of a type a loader reads.

    Raises:
        InvalidRequest: nothing usable is left of the name.
        UnsupportedFile: no loader reads its type.
    """
    from ingest.loaders import SUPPORTED_SUFFIXES

    base = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable() and ch not in '<>:"|?*').strip().lstrip(".")
    while len(base.encode()) > MAX_NAME_BYTES:
        stem, dot, suffix = base.rpartition(".")
        base = f"{stem[:-1]}{dot}{suffix}" if dot and stem else base[:-1]
    if not base or base in (".", ".."):
        raise InvalidRequest(f"unusable file name {name!r}")
    if Path(base).suffix.lower() not in SUPPORTED_SUFFIXES:
        raise UnsupportedFile(f"{base}: unsupported file type; send {' '.join(SUPPORTED_SUFFIXES)}")
    return base


def write_text_documents(folder: Path, documents: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Documents given as text (``id``, ``text``, ``title``, ``metadata``) as one JSONL file in ``folder``, the
    form the pipeline reads; returns {saved path: the name errors show}."""
    target = folder / TEXT_DOCUMENTS
    with open(target, "w", encoding="utf-8") as fh:
        for doc in documents:
            record = {**doc.get("metadata", {}), "id": doc["id"], "text": doc["text"], "title": doc.get("title", "")}
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return {str(target): "api"}


def _shown(text: str, names: Mapping[str, str]) -> str:
    for saved, name in names.items():
        text = text.replace(saved, name)
    return text


def can_add(services: Services) -> None:
    """Refuse an add the served base cannot do, before its upload is read.

    Raises:
        Unavailable: the model is not loaded (a BM25-only server).
    """
    if services.embedder is None:
        raise Unavailable("adding documents needs the embedding model")


def add_documents(
    services: Services, folder: Path, names: Mapping[str, str], cancel: threading.Event | None = None
) -> DocumentsChange:
    """Ingest the files in ``folder`` into the index ``services`` serves, with its model and chunker, in a
    fresh worker process (the per-file time limit holds there), cancellable between files and shards, all or
    nothing. ``names`` maps saved paths to the names errors and warnings show.

    Raises:
        Unavailable: the model is not loaded (a BM25-only server).
        WriterBusy: another writer holds the index.
        DocumentsRejected: a file or record cannot be used (named); nothing was published.
    """
    from app.services import ingest_limits
    from ingest.chunkers import ChunkSettings
    from ingest.pipeline import IngestOptions, IngestRejected, NothingToIngest, ingest
    from retrieval.index import IndexLockedError

    can_add(services)
    settings = services.settings  # the base's
    options = IngestOptions(
        workers=1,
        isolated=True,
        limits=ingest_limits(settings),
        all_or_nothing=True,
        source_names=dict(names),
        cancel=cancel,
        shard_chunks=JOB_SHARD_CHUNKS,
        connection=settings.milvus.connection,
    )
    chunker = ChunkSettings(**services.index.manifest.get("chunker", {}))
    try:
        summary = ingest(
            [folder], settings.index, services.embedder, services.analyzer, chunker, progress=False, options=options
        )
    except IndexLockedError as exc:
        raise WriterBusy(str(exc)) from exc
    except (IngestRejected, NothingToIngest) as exc:
        raise DocumentsRejected(_shown(str(exc), names)) from exc
    return DocumentsChange(
        version=summary.version,
        documents_indexed=summary.documents_indexed,
        documents_unchanged=summary.documents_unchanged,
        chunks=summary.chunks,
        total_documents=summary.total_documents,
        total_chunks=summary.total_chunks,
        warnings=[_shown(w["reason"], names) for w in summary.warnings],
    )


def delete_documents(index_dir: Path, doc_ids: Sequence[str], connection: Mapping[str, str]) -> DocumentsChange:
    """Remove documents from the index in ``index_dir`` and publish the change.

    Raises:
        WriterBusy: another writer holds the index.
        NoSuchDocument: the index holds none of them (nothing was published).
    """
    from ingest.pipeline import remove_documents
    from retrieval.index import IndexLockedError, LiveDocs

    try:
        removal = remove_documents(index_dir, list(doc_ids), dict(connection))
    except IndexLockedError as exc:
        raise WriterBusy(str(exc)) from exc
    if not removal.removed:
        shown = doc_ids[0] if len(doc_ids) == 1 else list(doc_ids)
        raise NoSuchDocument(f"no document {shown!r} in the index")
    live = LiveDocs(index_dir)
    try:
        totals = live.docs.count_documents(), live.docs.count()
    finally:
        live.close()
    return DocumentsChange(
        version=removal.version, documents_removed=removal.removed, total_documents=totals[0], total_chunks=totals[1]
    )


def list_documents(services: Services, offset: int = 0, limit: int = 100, contains: str = "") -> DocumentPage:
    """A page of the served index's documents with their chunk and page counts, ordered by id; with
    ``contains``, only those whose id or source holds that text.

    Raises:
        InvalidRequest: ``offset`` below 0 or over :data:`MAX_OFFSET`, ``limit`` outside 1..:data:`MAX_LIST`,
            ``contains`` longer than :data:`MAX_NAME_BYTES` bytes.
    """
    if not 0 <= offset <= MAX_OFFSET or not 1 <= limit <= MAX_LIST:
        raise InvalidRequest(f"offset must be 0..{MAX_OFFSET} and limit 1..{MAX_LIST}")
    if len(contains.encode()) > MAX_NAME_BYTES:
        raise InvalidRequest(f"a name search is at most {MAX_NAME_BYTES} bytes")
    docs = services.index.docs
    rows = [DocumentRow(d, s, n, docs.document_pages(d)) for d, s, n in docs.list_documents(offset, limit, contains)]
    return DocumentPage(docs.count_documents(contains), offset, limit, rows)
