"""Immutable segments: what a write adds, shared by every version that lists it.

A segment directory (``DIR/segments/<name>/``) holds some chunks' rows (``chunks.sqlite``), their vectors
(the store's files) and their raw BM25 statistics (``postings/``), and never changes once published. A
version's manifest lists its segments, each with the file of its deletions as of that version
(``del-*.npz``: the row ids and document ids removed since the segment was written, added to the segment
directory under a new name, so older versions keep reading theirs). A one-document change thus writes one
small segment and, for a replaced or deleted document, one small deletions file; merging (``retrieval.index``)
rewrites small segments into larger ones and drops deleted rows.
"""

from __future__ import annotations

import heapq
import json
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.bm25 import POSTINGS_DIR, BM25Builder, ChunkTerms, Postings, SegmentedBM25
from retrieval.docstore import DOCSTORE_FILE, DocStore
from retrieval.metadata_filter import MetadataFilter
from retrieval.process import LOADED_SEGMENTS
from retrieval.protocols import VectorStore
from retrieval.stores import MISSING_ID, StoreError, create_store, load_store, store_class
from retrieval.types import Chunk
from retrieval.versions import fsync_dir, fsync_file, fsync_tree

__all__ = [
    "SEGMENTS_DIR",
    "SEGMENT_FILE",
    "APPROXIMATE_FROM",
    "SegmentEntry",
    "Segment",
    "SegmentBuilder",
    "SegmentSource",
    "SegmentedDocs",
    "SegmentedVectors",
    "open_segments",
    "write_segment",
    "live_hashes",
    "new_segment_name",
]

SEGMENTS_DIR = "segments"
SEGMENT_FILE = "segment.json"
APPROXIMATE_FROM = 20_000
"""A segment smaller than this is searched exactly whatever the index type: a flat scan of it takes well
under a millisecond, and IVF-PQ cannot even train on a few vectors."""


def new_segment_name() -> str:
    """A fresh, unique segment name."""
    return f"s-{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class SegmentEntry:
    """A version's record of one segment.

    Attributes:
        name: The segment directory under ``segments/``.
        chunks: Rows written into the segment.
        documents: Documents written into it.
        deletes: The file of its deletions as of this version (``None``: none).
        deleted_chunks: Rows deleted since.
        deleted_documents: Documents deleted since.
    """

    name: str
    chunks: int
    documents: int
    deletes: str | None = None
    deleted_chunks: int = 0
    deleted_documents: int = 0

    @property
    def live_chunks(self) -> int:
        """Rows still in the index."""
        return self.chunks - self.deleted_chunks

    @property
    def live_documents(self) -> int:
        """Documents still in the index."""
        return self.documents - self.deleted_documents

    def to_json(self) -> dict[str, Any]:
        """The manifest's form."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SegmentEntry:
        """Read the manifest's form."""
        return cls(**data)


def _read_deletes(path: Path, name: str | None) -> tuple[np.ndarray, frozenset[str]]:
    if name is None:
        return np.zeros(0, dtype=np.int64), frozenset()
    with np.load(path / name) as data:
        return np.asarray(data["rids"], dtype=np.int64), frozenset(data["docs"].tolist())


def write_deletes(path: Path, rids: np.ndarray, docs: Iterable[str]) -> str:
    """Write a deletions file into segment directory ``path`` (durably); returns its name."""
    name = f"del-{uuid.uuid4().hex[:12]}.npz"
    with open(path / name, "wb") as fh:
        np.savez(fh, rids=np.unique(np.asarray(rids, dtype=np.int64)), docs=np.asarray(sorted(docs), dtype=str))
    fsync_file(path / name)
    fsync_dir(path)
    return name


@dataclass(eq=False)
class _Loaded:
    """A segment's vectors and postings as read (shared by the open versions that list the segment)."""

    store: VectorStore
    postings: Postings


class Segment:
    """One segment as a version sees it: its rows, minus that version's deletions. Opening reads the rows'
    database only; :meth:`load` reads the vectors and postings (a reader loads them at once, so a segment
    removed later by a writer's clean-up stays readable)."""

    def __init__(self, root: Path, entry: SegmentEntry) -> None:
        self.entry = entry
        self.path = root / SEGMENTS_DIR / entry.name
        self.info = json.loads((self.path / SEGMENT_FILE).read_text(encoding="utf-8"))
        self.deleted, self.deleted_docs = _read_deletes(self.path, entry.deletes)
        self._deleted_set = frozenset(self.deleted.tolist())
        self.docs = DocStore(self.path / DOCSTORE_FILE, readonly=True)
        self.rid_range = self.docs.rid_range()
        self._loaded: _Loaded | None = None

    @property
    def name(self) -> str:
        """The segment's name."""
        return self.entry.name

    @property
    def store(self) -> VectorStore | None:
        """The vectors, once :meth:`load` read them."""
        return self._loaded.store if self._loaded else None

    @property
    def postings(self) -> Postings | None:
        """The BM25 statistics, once :meth:`load` read them."""
        return self._loaded.postings if self._loaded else None

    def load(self, dim: int, store_conf: Mapping[str, Any], connection: Mapping[str, str] | None = None) -> Segment:
        """Read the vectors (the version's store options with this segment's layout) and the postings.

        A segment never changes, so what another open version of this process loaded from it is shared
        (a server swapping versions after a small write reads only the new segment) — except a store with
        a connection of its own, which each version opens and closes itself."""
        conf = {**store_conf, **self.info["store"]}
        backend = conf.pop("backend")
        key = json.dumps([str(self.path.resolve()), conf], sort_keys=True, default=str)
        shared = not store_class(backend).external
        loaded = LOADED_SEGMENTS.get(key) if shared else None
        if loaded is None:
            store = load_store(backend, self.path, dim, **conf, **(connection or {}))
            loaded = _Loaded(store, Postings.load(self.path / POSTINGS_DIR))
            if shared:
                loaded = LOADED_SEGMENTS.put(key, loaded)
        self._loaded = loaded
        return self

    def release(self) -> None:
        """Forget the loaded vectors and postings (copied elsewhere: the reader's view of small segments)."""
        self._loaded = None

    def is_live(self, rid: int) -> bool:
        """Whether row ``rid`` (of this segment) is not deleted."""
        return rid not in self._deleted_set

    def has_document(self, doc_id: str) -> bool:
        """Whether the document is live in this segment."""
        return doc_id not in self.deleted_docs and self.docs.document(doc_id) is not None

    def live_mask(self) -> np.ndarray | None:
        """Per postings position, whether its row is live (``None``: every row is)."""
        assert self.postings is not None, "load() first"
        return None if not len(self.deleted) else ~np.isin(self.postings.rids, self.deleted)

    def live_items(self, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The live (row ids, vectors), in batches."""
        assert self.store is not None, "load() first"
        return _without(self.store.items(batch), self.deleted)

    def close(self) -> None:
        """Release the rows' database (and the store's connection)."""
        self.docs.close()
        if self.store is not None:
            self.store.close()  # a no-op for the shared, connection-less stores


def _without(
    items: Iterable[tuple[np.ndarray, np.ndarray]], deleted: np.ndarray | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) batches without the ``deleted`` ids (and without the batches left empty)."""
    for ids, vectors in items:
        if deleted is not None and len(deleted):
            keep = ~np.isin(ids, deleted)
            ids, vectors = ids[keep], vectors[keep]
        if len(ids):
            yield ids, vectors


def live_hashes(parts: Iterable[tuple[DocStore, AbstractSet[str]]]) -> dict[str, str]:
    """Content hash per document over segments' rows, each without the documents deleted from it."""
    out: dict[str, str] = {}
    for docs, gone in parts:
        out.update((d, h) for d, h in docs.document_hashes().items() if d not in gone)
    return out


class HashLookup(Mapping[str, str]):
    """Content hash per live document of a version, looked up per document rather than read in full (an
    ingest of one file into a large index asks for one). Picklable: an ingest worker process opens the
    segments' rows itself (they never change). After ``FULL_AFTER`` lookups it reads them all at once.

    Args:
        segments: Per segment, oldest first, its rows' database and the documents deleted from it.
    """

    FULL_AFTER = 64

    def __init__(self, segments: Sequence[tuple[Path, frozenset[str]]]) -> None:
        self._segments = list(segments)
        self._open: list[DocStore] | None = None
        self._all: dict[str, str] | None = None
        self._asked = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": None}

    def _stores(self) -> list[DocStore]:
        if self._open is None:
            self._open = [DocStore(path, readonly=True) for path, _ in self._segments]
        return self._open

    def _everything(self) -> dict[str, str]:
        if self._all is None:
            self._all = live_hashes(zip(self._stores(), (gone for _, gone in self._segments), strict=True))
        return self._all

    def __getitem__(self, doc_id: str) -> str:
        self._asked += 1
        if self._all is not None or self._asked > self.FULL_AFTER:
            return self._everything()[doc_id]
        for store, (_, gone) in zip(reversed(self._stores()), reversed(self._segments), strict=True):
            if doc_id not in gone and (found := store.document_hash(doc_id)) is not None:
                return found
        raise KeyError(doc_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._everything())

    def __len__(self) -> int:
        return len(self._everything())


class SegmentedDocs:
    """The chunk rows and documents of a version, over its segments (a document is live in one of them)."""

    def __init__(self, segments: Sequence[Segment], next_rid: int) -> None:
        self.segments = list(segments)
        self._next_rid = next_rid

    def close(self) -> None:
        """Release every segment."""
        for segment in self.segments:
            segment.close()

    def next_rid(self) -> int:
        """The next free row id."""
        return self._next_rid

    def count(self) -> int:
        """Live chunks."""
        return sum(s.entry.live_chunks for s in self.segments)

    def count_documents(self, contains: str = "") -> int:
        """Live documents (whose id or source holds ``contains``, when given)."""
        if not contains:
            return sum(s.entry.live_documents for s in self.segments)
        return sum(
            s.docs.count_matching(contains) - s.docs.count_matching(contains, sorted(s.deleted_docs))
            for s in self.segments
        )

    def document_pages(self, doc_id: str) -> int | None:
        """The last page a live document's chunks come from (``None``: not a paged source, or no such document)."""
        holder = self._holder(doc_id)
        return holder.docs.document_pages(doc_id) if holder else None

    def _holder(self, doc_id: str) -> Segment | None:
        return next((s for s in reversed(self.segments) if s.has_document(doc_id)), None)

    def document_hash(self, doc_id: str) -> str | None:
        """The stored content hash of a document, if ingested."""
        holder = self._holder(doc_id)
        return holder.docs.document_hash(doc_id) if holder else None

    def document_hashes(self) -> dict[str, str]:
        """Content hash of every live document, by id."""
        return live_hashes((s.docs, s.deleted_docs) for s in self.segments)

    def document_ids(self) -> list[str]:
        """Ids of all live documents, sorted."""
        return sorted(self.document_hashes())

    def list_documents(self, offset: int = 0, limit: int = 100, contains: str = "") -> list[tuple[str, str, int]]:
        """(doc_id, source, chunks) of a page of live documents, ordered by id; with ``contains``, only those
        whose id or source holds that text."""
        pages = []
        for segment in self.segments:  # enough of each segment's first rows to fill the page after deletions
            rows = segment.docs.list_documents(0, offset + limit + len(segment.deleted_docs), contains)
            pages.append([r for r in rows if r[0] not in segment.deleted_docs])
        merged = heapq.merge(*pages)
        return [row for _, row in zip(range(offset + limit), merged, strict=False)][offset:]

    def get(self, rids: Iterable[int]) -> dict[int, Chunk]:
        """Live chunks by row id."""
        rids = [int(r) for r in rids]
        out: dict[int, Chunk] = {}
        for segment in self.segments:
            low, high = segment.rid_range
            mine = [r for r in rids if low <= r <= high]  # a search's few hits touch one or two segments
            if mine:
                out.update((rid, c) for rid, c in segment.docs.get(mine).items() if segment.is_live(rid))
        return out

    def document_chunks(self, doc_id: str) -> list[Chunk]:
        """All chunks of a live document, in order."""
        holder = self._holder(doc_id)
        return holder.docs.document_chunks(doc_id) if holder else []

    def iter_fields(self) -> Iterator[tuple[int, str, str, dict[str, Any]]]:
        """(row id, doc_id, title, metadata) of every live chunk, by row id."""
        streams = [(row for row in s.docs.iter_fields() if s.is_live(row[0])) for s in self.segments]
        yield from heapq.merge(*streams, key=lambda row: row[0])

    def filter_rids(self, spec: MetadataFilter) -> np.ndarray:
        """Row ids of the live chunks a filter admits, ascending."""
        parts = [s.docs.filter_rids(spec) for s in self.segments]
        parts = [p[~np.isin(p, s.deleted)] if len(s.deleted) else p for p, s in zip(parts, self.segments, strict=True)]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def _split_tail(segments: Sequence[Segment]) -> tuple[list[Segment], list[Segment]]:
    """The live segments large enough to search alone, and the small ones a reader searches as one."""
    live = [s for s in segments if s.entry.live_chunks]
    large = [s for s in live if s.entry.live_chunks >= APPROXIMATE_FROM]
    tail = [s for s in live if s.entry.live_chunks < APPROXIMATE_FROM]
    return (large, tail) if len(tail) > 1 else (live, [])


class SegmentedVectors:
    """Dense search over a version's segments, each searched with its deletions excluded inside the
    search and the per-segment top ``k`` merged by score (exact when every segment is flat). The small
    segments (all flat) are copied into one flat store when the version is opened: a search then costs
    about what it costs on one segment however many small writes made them."""

    def __init__(self, large: Sequence[Segment], tail: Sequence[Segment], dim: int) -> None:
        self.dim = dim
        self._parts: list[tuple[VectorStore, np.ndarray | None]] = []
        for segment in large:
            assert segment.store is not None, "load() first"
            self._parts.append((segment.store, segment.deleted if len(segment.deleted) else None))
        if tail:
            combined = _local_flat(dim)
            for segment in tail:
                for ids, vectors in segment.live_items():
                    combined.add(ids, vectors)
            self._parts.append((combined, None))
        self._count = sum(s.entry.live_chunks for s in [*large, *tail])

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, excluded: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query row, best first."""
        found = []
        for store, deleted in self._parts:
            gone = deleted if excluded is None else np.union1d(deleted if deleted is not None else [], excluded)
            found.append(store.search(queries, k, allowed, gone if gone is not None and len(gone) else None))
        if not found:
            n = len(queries)
            return np.full((n, 1), -np.inf, dtype=np.float32), np.full((n, 1), MISSING_ID, dtype=np.int64)
        if len(found) == 1:
            return found[0]
        scores = np.concatenate([s for s, _ in found], axis=1)
        ids = np.concatenate([i for _, i in found], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, : max(1, min(k, self._count))]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)

    def count(self) -> int:
        """Live vectors."""
        return self._count

    def items(self, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every live (ids, vectors), in batches."""
        for store, deleted in self._parts:
            yield from _without(store.items(batch), deleted)

    def close(self) -> None:
        """Nothing beyond the segments (closed with the docs)."""
        return None


def _local_flat(dim: int) -> VectorStore:
    """An exact store in this process (FAISS, else NumPy), whatever store the segments are kept in."""
    try:
        return create_store("faiss", dim, kind="flat")
    except StoreError:
        return create_store("numpy", dim)


def _segmented_bm25(large: Sequence[Segment], tail: Sequence[Segment], k1: float, b: float) -> SegmentedBM25:
    """The BM25 leg over loaded segments, with their deletions; the small segments (``tail``) united into
    one postings (see :class:`SegmentedVectors`)."""
    parts: list[tuple[Postings, np.ndarray | None]] = []
    for segment in large:
        assert segment.postings is not None, "load() first"
        parts.append((segment.postings, segment.live_mask()))
    if tail:
        parts.append((Postings.combine([(s.postings, s.live_mask()) for s in tail]), None))  # type: ignore[misc]
    return SegmentedBM25(parts, k1, b)


def open_segments(
    segments: Sequence[Segment],
    dim: int,
    store_conf: Mapping[str, Any],
    bm25: Mapping[str, float],
    connection: Mapping[str, str] | None = None,
) -> tuple[SegmentedVectors, SegmentedBM25]:
    """Load a version's segments and make its two legs; the small segments' own copies are then let go."""
    for segment in segments:
        segment.load(dim, store_conf, connection)
    large, tail = _split_tail(segments)
    vectors, lexical = SegmentedVectors(large, tail, dim), _segmented_bm25(large, tail, **bm25)
    for segment in tail:
        if segment.store is not None and segment.store.external:
            segment.store.close()
        segment.release()
    return vectors, lexical


def segment_store_conf(store_conf: Mapping[str, Any], chunks: int) -> dict[str, Any]:
    """The store options for a segment of ``chunks`` rows: exact when small, else as the index says."""
    conf = {k: v for k, v in store_conf.items() if k != "layout"}
    if conf.get("backend") in ("faiss", "milvus") and chunks < APPROXIMATE_FROM:
        conf["kind"] = "flat"
    return conf


def _publish_segment(
    staging: Path, root: Path, backend: str, store: VectorStore, postings: Postings, counts: tuple[int, int]
) -> str:
    """Write the store, postings and description into ``staging``, flush it and rename it into place (a
    failure drops what the store holds outside the index)."""
    try:
        return _write_segment_files(staging, root, backend, store, postings, counts)
    except BaseException:
        store.drop()
        raise
    finally:
        store.close()


def _write_segment_files(
    staging: Path, root: Path, backend: str, store: VectorStore, postings: Postings, counts: tuple[int, int]
) -> str:
    store.save(staging)
    postings.save(staging / POSTINGS_DIR)
    info = {"chunks": counts[1], "documents": counts[0], "store": store.describe() or {"backend": backend}}
    (staging / SEGMENT_FILE).write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    fsync_tree(staging)
    name = new_segment_name()
    (root / SEGMENTS_DIR).mkdir(exist_ok=True)
    staging.rename(root / SEGMENTS_DIR / name)
    fsync_dir(root / SEGMENTS_DIR)
    return name


class SegmentBuilder:
    """The new segment a write fills: rows in a staging docstore, vectors and BM25 statistics in memory.

    Args:
        staging: An empty directory the segment is built in (renamed into ``segments/`` by :meth:`publish`).
        dim: Vector dimension.
        bm25: The index's BM25 parameters (``k1``, ``b``).
    """

    def __init__(self, staging: Path, dim: int, bm25: Mapping[str, float]) -> None:
        self.staging, self.dim = staging, dim
        self.docs = DocStore(staging / DOCSTORE_FILE)
        self._terms = BM25Builder(**bm25)
        self._vectors: dict[int, np.ndarray] = {}

    def count(self) -> int:
        """Rows added (and not deleted again)."""
        return len(self._vectors)

    def add(self, doc: tuple[str, str, str], chunks: Sequence[Chunk], vectors: np.ndarray, terms: ChunkTerms) -> None:
        """Add one document (id, source, content hash) with its chunks (``rid`` set), vectors and terms."""
        rids = [c.rid for c in chunks]
        self.docs.add(chunks, terms.joined)
        self.docs.set_document(doc[0], doc[1], doc[2], len(chunks))
        self._terms.add(rids, terms)
        for rid, vector in zip(rids, np.asarray(vectors, dtype=np.float32), strict=True):
            self._vectors[int(rid)] = vector

    def delete_document(self, doc_id: str) -> int | None:
        """Remove a document added by this write; its chunk count, ``None`` when it was not added here."""
        if self.docs.document_hash(doc_id) is None:
            return None
        rids = self.docs.delete_document(doc_id)
        self._terms.discard(rids)
        for rid in rids:
            self._vectors.pop(rid, None)
        return len(rids)

    def publish(
        self, root: Path, store_conf: Mapping[str, Any], connection: Mapping[str, str] | None = None
    ) -> SegmentEntry | None:
        """Write the segment into ``root/segments/``; ``None`` (and nothing written) when it holds nothing."""
        self.docs.commit()
        counts = (self.docs.count_documents(), self.docs.count())
        self.docs.close()
        if not counts[0]:
            return None
        conf = segment_store_conf(store_conf, counts[1])
        backend = conf.pop("backend")
        store = create_store(backend, self.dim, **conf, **(connection or {}))
        try:
            if self._vectors:
                rids = np.fromiter(sorted(self._vectors), dtype=np.int64, count=len(self._vectors))
                store.add(rids, np.stack([self._vectors[int(r)] for r in rids]))
        except BaseException:
            store.drop()
            store.close()
            raise
        name = _publish_segment(self.staging, root, backend, store, self._terms.postings(), counts)
        return SegmentEntry(name, chunks=counts[1], documents=counts[0])

    def close(self) -> None:
        """Release the staging docstore."""
        self.docs.close()


@dataclass(frozen=True)
class SegmentSource:
    """Rows to copy into a new segment: a docstore, what of it is deleted, and its live vectors."""

    docstore: Path
    deleted: np.ndarray
    deleted_docs: frozenset[str]
    vectors: Iterable[tuple[np.ndarray, np.ndarray]]


def write_segment(
    root: Path,
    staging: Path,
    sources: Sequence[SegmentSource],
    dim: int,
    store_conf: Mapping[str, Any],
    bm25: Mapping[str, float],
    connection: Mapping[str, str] | None = None,
) -> SegmentEntry | None:
    """Copy the live rows of ``sources`` into one new segment (a merge, or an older index's upgrade), built
    in the empty directory ``staging``; ``None`` when nothing is live. BM25 statistics are recounted from
    the stored terms."""
    docs = DocStore(staging / DOCSTORE_FILE)
    try:
        docs.copy_live([(s.docstore, s.deleted, sorted(s.deleted_docs)) for s in sources])
        counts = (docs.count_documents(), docs.count())
        terms = BM25Builder(**bm25).add_stored(docs.iter_tokens())
    finally:
        docs.close()
    if not counts[0]:
        shutil.rmtree(staging, ignore_errors=True)
        return None
    conf = segment_store_conf(store_conf, counts[1])
    backend = conf.pop("backend")
    store = create_store(backend, dim, **conf, **(connection or {}))
    try:
        for source in sources:
            for ids, vectors in source.vectors:
                store.add(ids, vectors)
        if store.count() != counts[1]:
            raise StoreError(f"a segment would hold {store.count()} vectors for {counts[1]} chunks")
    except BaseException:
        store.drop()
        store.close()
        raise
    name = _publish_segment(staging, root, backend, store, terms.postings(), counts)
    return SegmentEntry(name, chunks=counts[1], documents=counts[0])


def with_deletions(entry: SegmentEntry, segment: Segment, rids: set[int], docs: set[str]) -> SegmentEntry:
    """``entry`` after deleting ``rids`` and ``docs`` too (a new deletions file in the segment)."""
    all_rids = np.union1d(segment.deleted, np.fromiter(rids, dtype=np.int64, count=len(rids)))
    all_docs = set(segment.deleted_docs) | docs
    name = write_deletes(segment.path, all_rids, all_docs)
    return replace(entry, deletes=name, deleted_chunks=len(all_rids), deleted_documents=len(all_docs))
