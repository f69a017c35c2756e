"""An index directory: versions published atomically, so a failed write never breaks serving.

A version lists immutable segments (``retrieval.segments``) and their deletions; a write adds one segment
holding only its new chunks and records what it deleted, then publishes a new manifest by the atomic
``CURRENT`` swap (``retrieval.versions`` has the layout and the one-writer lock). Unchanged segments are
shared between versions, never copied; :meth:`IndexWriter.merge` rewrites small segments into larger ones
(a tiered policy, ``retrieval.merge_policy``). Readers read ``CURRENT`` once and open that version; the
previous version is kept for running readers. Versions written before segments (format 1) are read as they
are and upgraded on their first write.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.bm25 import BM25_DIR, DEFAULT_B, DEFAULT_K1, BM25Builder, BM25Index, ChunkTerms
from retrieval.docstore import DOCSTORE_FILE, DocStore
from retrieval.merge_policy import MergePolicy, plan_merge
from retrieval.protocols import LexicalIndex
from retrieval.segments import (
    SEGMENT_FILE,
    SEGMENTS_DIR,
    HashLookup,
    Segment,
    SegmentBuilder,
    SegmentedDocs,
    SegmentEntry,
    SegmentSource,
    live_hashes,
    open_segments,
    with_deletions,
    write_segment,
)
from retrieval.stores import discard_store, load_store, store_class
from retrieval.types import Chunk
from retrieval.versions import (
    CURRENT_FILE,
    MANIFEST_FILE,
    SEGMENTED_FORMAT,
    STAGING_PREFIX,
    UPLOAD_PREFIX,
    VERSION_PREFIX,
    WHOLE_FORMAT,
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    WriterLock,
    ZhragIndexError,
    atomic_write_text,
    check_embedder,
    current_version,
    current_version_dir,
    fsync_dir,
    fsync_tree,
    live_version,
    now,
    read_manifest,
    remove_dead_staging,
    remove_left_over,
    reserve_writer,
    version_dirs,
)

log = logging.getLogger(__name__)

__all__ = [
    "Index",
    "LiveDocs",
    "IndexWriter",
    "ZhragIndexError",
    "IndexNotFoundError",
    "IndexMismatchError",
    "IndexLockedError",
    "read_manifest",
    "current_version",
    "check_embedder",
    "migrate_store",
    "merge_segments",
    "reserve_writer",
    "remove_dead_staging",
    "UPLOAD_PREFIX",
    "MANIFEST_FILE",
    "CURRENT_FILE",
]


def load_whole_store(version: Path, manifest: dict[str, Any], connection: Mapping[str, str] | None = None) -> Any:
    """The vector store of a whole (format 1) version."""
    store_conf = dict(manifest["store"])
    backend = store_conf.pop("backend")
    return load_store(backend, version, manifest["dim"], **store_conf, **(connection or {}))


def _segment_entries(manifest: Mapping[str, Any]) -> list[SegmentEntry]:
    return [SegmentEntry.from_json(e) for e in manifest["segments"]]


class LiveDocs:
    """The live version's manifest and chunks, without its vectors or BM25: what listing documents and
    checking citations read (opens in milliseconds whatever the index's size)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.version_dir, self.manifest = live_version(self.root)  # manifest and data come from the same version
        self.docs: DocStore | SegmentedDocs
        self.segments: list[Segment] = []
        if self.segmented:
            self.segments = [Segment(self.root, e) for e in _segment_entries(self.manifest)]
            self.docs = SegmentedDocs(self.segments, int(self.manifest["next_rid"]))
        elif self.manifest.get("format") == WHOLE_FORMAT:
            self.docs = DocStore(self.version_dir / DOCSTORE_FILE)
        else:
            raise ZhragIndexError(f"index format {self.manifest.get('format')} is not supported by this zhrag")

    @property
    def segmented(self) -> bool:
        """Whether the version lists segments (else it holds all its data itself)."""
        return self.manifest.get("format") == SEGMENTED_FORMAT

    @property
    def version(self) -> str:
        """The name of the version this view opened."""
        return self.version_dir.name

    def close(self) -> None:
        """Release the docstore connections."""
        self.docs.close()


class Index(LiveDocs):
    """A read-only view of the live version of an index: rows, vectors and BM25, all read at once.

    Args:
        root: The index directory.
        connection: The store's connection secrets, never written to the index (e.g. a Milvus ``token``).
    """

    def __init__(self, root: Path | str, connection: Mapping[str, str] | None = None) -> None:
        super().__init__(root)
        self.bm25: LexicalIndex | None
        if self.segmented:
            self.store: Any
            self.store, self.bm25 = open_segments(
                self.segments, self.dim, self.manifest["store"], self.manifest["bm25"], connection
            )
            return
        self.store = load_whole_store(self.version_dir, self.manifest, connection)
        bm25_dir = self.version_dir / BM25_DIR
        if bm25_dir.is_dir():
            self.bm25 = BM25Index.load(bm25_dir)
        else:  # an older Milvus index kept it in Milvus: counted again from the stored terms until its first write
            terms = BM25Builder(**self.manifest.get("bm25", {})).add_stored(self.docs.iter_tokens())
            self.bm25 = terms.build() if len(terms) else None

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.manifest["dim"])

    def close(self) -> None:
        """Release the docstore connections (and the vector store's, where it holds one)."""
        super().close()
        self.store.close()


def _remove_unlisted_segments(
    root: Path, versions: Iterable[Path], connection: Mapping[str, str], sweep: bool = False
) -> None:
    """Remove the segments (with what their store holds outside the index), and the deletions files of
    kept segments, that none of ``versions`` lists; ``sweep`` also releases what dead writers left in an
    external store without a segment directory to name it."""
    versions = list(versions)
    listed: dict[str, set[str]] = {}
    stores: dict[str, dict[str, Any]] = {}
    for version in versions:
        try:
            manifest = json.loads((version / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # an unreadable version: keep everything rather than guess
        stores[manifest["store"]["backend"]] = manifest["store"]
        for entry in _segment_entries(manifest) if manifest.get("format") == SEGMENTED_FORMAT else []:
            listed.setdefault(entry.name, set()).add(entry.deletes or "")
    folder = root / SEGMENTS_DIR
    for segment in sorted(folder.iterdir()) if folder.is_dir() else []:
        if segment.name not in listed:
            _release_segment(segment, connection)
            continue
        for deletes in segment.glob("del-*.npz"):
            if deletes.name not in listed[segment.name]:
                deletes.unlink(missing_ok=True)
    for backend, conf in stores.items() if sweep else ():
        if store_class(backend).external:
            kept = [folder / name for name in listed] + versions
            store_class(backend).sweep(conf, kept, **connection)


def _release_segment(segment: Path, connection: Mapping[str, str]) -> None:
    try:
        backend = json.loads((segment / SEGMENT_FILE).read_text(encoding="utf-8"))["store"]["backend"]
        discard_store(backend, segment, [], **connection)
    except FileNotFoundError:
        pass  # never published: its store, if any, is swept
    except Exception as exc:  # noqa: BLE001 - best effort; the sweep of the next writer retries
        log.warning("could not release the store of segment %s: %s", segment.name, exc)
    shutil.rmtree(segment, ignore_errors=True)


class IndexWriter:
    """Stage changes to an index and publish them atomically with :meth:`commit`: a new segment holds the
    added chunks, deletions are recorded per segment, nothing else is rewritten. An index written before
    segments (format 1) is upgraded on its first write: its data becomes one segment.

    Args:
        root: Index directory (created if missing).
        embedder: Manifest entry of the embedder (``describe()``); must match an existing index.
        store: Vector store backend and options for a new index, e.g. ``{"backend": "faiss"}``.
        settings: Extra manifest fields (chunker, analyzer, ...).
        bm25: BM25 parameters of a new index.
        connection: The store's connection secrets, never written to the index (e.g. a Milvus ``token``).
    """

    staging: Path
    manifest: dict[str, Any]

    def __init__(
        self,
        root: Path | str,
        embedder: dict[str, Any],
        store: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
        bm25: dict[str, float] | None = None,
        connection: Mapping[str, str] | None = None,
    ) -> None:
        previous = self._open(root, connection)
        try:
            if previous is None:
                self.manifest = _new_manifest(embedder, store, bm25)
            else:
                self.manifest = json.loads((previous / MANIFEST_FILE).read_text(encoding="utf-8"))
                check_embedder(self.manifest, embedder["model"], embedder["dim"])
                if self.manifest.get("format") == WHOLE_FORMAT:
                    self._upgrade(previous)
            self._segments = [Segment(self.root, e) for e in _segment_entries(self.manifest)]
            self._segments_store = dict(self.manifest["store"])  # what the listed segments were written with
            self.manifest.update(settings or {})
            self._builder = SegmentBuilder(self.staging, self.dim, self.manifest["bm25"])
        except BaseException:
            shutil.rmtree(self.staging, ignore_errors=True)
            self._lock.release()
            raise
        self._next_rid = int(self.manifest["next_rid"])
        self._deleted: dict[str, tuple[set[int], set[str]]] = {}
        self._counts: tuple[int, int] | None = None

    def _open(self, root: Path | str, connection: Mapping[str, str] | None) -> Path | None:
        """Take the lock, clear what dead writers left and make the staging directory; the live version."""
        self.root = Path(root)
        self.connection = dict(connection or {})
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = WriterLock.take(self.root)
        remove_left_over(self.root, (STAGING_PREFIX,))  # we hold the lock: their writers are dead
        try:
            previous = current_version_dir(self.root)
            if previous is not None:
                self._remove_unpublished(previous)
            # a dead writer's or merge's segments
            _remove_unlisted_segments(self.root, version_dirs(self.root), self.connection, sweep=True)
        except BaseException:
            self._lock.release()
            raise
        self._base = previous.name if previous else ""
        self.staging = self._new_staging()
        self._changed = False
        return previous

    def _new_staging(self) -> Path:
        path = self.root / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        path.mkdir()
        return path

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None or self.staging.exists():
            self.abort()

    @property
    def changed(self) -> bool:
        """Whether anything was added or removed since the writer opened."""
        return self._changed

    @property
    def base_version(self) -> str:
        """Name of the version this writer started from (``""`` for a new index)."""
        return self._base

    def _publish(self, version_dir: Path, extra: dict[str, Any] | None) -> str:
        """Write the manifest into ``version_dir`` (a staging directory), flush it, rename it into place,
        swap ``CURRENT``, prune and release the lock; returns the version's name."""
        self.manifest.update(extra or {})
        self.manifest["updated_at"] = now()
        self.manifest["previous_version"] = self._base or None  # kept by the next prune, whatever the names
        (version_dir / MANIFEST_FILE).write_text(
            json.dumps(self.manifest, ensure_ascii=False, indent=2), encoding="utf-8"
        )
        fsync_tree(version_dir)
        name = f"{VERSION_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        os.replace(version_dir, self.root / name)
        fsync_dir(self.root)
        atomic_write_text(self.root / CURRENT_FILE, name + "\n")
        self._prune(name)
        self._lock.release()
        return name

    def _prune(self, live: str) -> None:
        """Keep the version just published and the one that was live before it (``CURRENT`` said so when
        this writer took the lock); remove every other, an orphan a crashed writer renamed but never
        published included — whatever their names sort as — and the segments only they listed."""
        self._keep_only({live, self._base})

    def _remove_unpublished(self, live: Path) -> None:
        """Versions neither live nor the live one's predecessor: a writer killed between renaming its
        version into place and writing ``CURRENT`` left them (we hold the lock: it is dead)."""
        try:
            before = json.loads((live / MANIFEST_FILE).read_text(encoding="utf-8")).get("previous_version")
        except (OSError, ValueError):
            return
        if before is None:  # written before versions named their predecessor: nothing can be told apart
            return
        self._keep_only({live.name, before}, why="it was never published (its writer died before CURRENT)")

    def _keep_only(self, keep: set[str], why: str | None = None) -> None:
        """Remove every version not named in ``keep`` (releasing what it holds in an external store), then
        every segment and deletions file no kept version lists."""
        versions = version_dirs(self.root)
        kept = [v for v in versions if v.name in keep]
        for version in versions:
            if version.name not in keep:
                if why:
                    log.warning("removing %s: %s", version.name, why)
                self._remove_version(version, kept)
        _remove_unlisted_segments(self.root, kept, self.connection)

    def _remove_version(self, version: Path, kept: list[Path]) -> None:
        try:
            manifest = json.loads((version / MANIFEST_FILE).read_text(encoding="utf-8"))
            if manifest.get("format") == WHOLE_FORMAT:
                discard_store(manifest["store"]["backend"], version, kept, **self.connection)
        except Exception as exc:  # noqa: BLE001 - pruning is best effort; the data stays consistent
            log.warning("could not release the store of %s: %s", version.name, exc)
        shutil.rmtree(version, ignore_errors=True)

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.manifest["dim"])

    def _upgrade(self, previous: Path) -> None:
        """Turn a whole-format version into one segment of the same store (BM25 recounted locally)."""
        conf = {k: v for k, v in self.manifest["store"].items() if k not in ("layout", "bm25")}
        source_store = load_whole_store(previous, self.manifest, self.connection)
        try:
            docs = DocStore(previous / DOCSTORE_FILE)
            next_rid = docs.next_rid()
            docs.close()
            source = SegmentSource(previous / DOCSTORE_FILE, np.zeros(0, np.int64), frozenset(), source_store.items())
            bm25 = self.manifest.get("bm25") or {"k1": DEFAULT_K1, "b": DEFAULT_B}
            entry = write_segment(self.root, self._new_staging(), [source], self.dim, conf, bm25, self.connection)
        finally:
            source_store.close()
        self.manifest.pop("counts", None)
        self.manifest.update(
            format=SEGMENTED_FORMAT,
            store=conf,
            bm25=bm25,
            next_rid=next_rid,
            segments=[entry.to_json()] if entry else [],
        )
        log.info("upgrading %s to segments on this first write (a one-time copy)", self.root)

    # -- reading the staged index ------------------------------------------------------------------
    def _pending(self, segment: Segment) -> tuple[set[int], set[str]]:
        """The rows and documents this writer deleted from ``segment`` so far."""
        return self._deleted.get(segment.name, (set(), set()))

    def _holder(self, doc_id: str) -> Segment | None:
        for segment in reversed(self._segments):
            if doc_id not in self._pending(segment)[1] and segment.has_document(doc_id):
                return segment
        return None

    def document_hash(self, doc_id: str) -> str | None:
        """Stored content hash of a document (``None`` if new)."""
        own = self._builder.docs.document_hash(doc_id)
        if own is not None:
            return own
        holder = self._holder(doc_id)
        return holder.docs.document_hash(doc_id) if holder else None

    def document_hashes(self) -> dict[str, str]:
        """Content hash of every document in the staged index, by id."""
        out = live_hashes((s.docs, s.deleted_docs | self._pending(s)[1]) for s in self._segments)
        out.update(self._builder.docs.document_hashes())
        return out

    def document_ids(self) -> list[str]:
        """Ids of the documents in the staged index."""
        return sorted(self.document_hashes())

    def hash_lookup(self) -> Mapping[str, str]:
        """Content hash per document of the version this writer started from, looked up on demand (what an
        ingest checks each document against; picklable for its worker processes)."""
        return HashLookup([(s.path / DOCSTORE_FILE, s.deleted_docs) for s in self._segments])

    def chunks_count(self) -> int:
        """Chunks in the staged index."""
        return self._counts[1] if self._counts else self._live_counts()[1]

    def documents_count(self) -> int:
        """Documents in the staged index."""
        return self._counts[0] if self._counts else self._live_counts()[0]

    def _live_counts(self) -> tuple[int, int]:
        documents = chunks = 0
        for segment in self._segments:
            rids, docs = self._pending(segment)
            documents += segment.entry.live_documents - len(docs)
            chunks += segment.entry.live_chunks - len(rids)
        return documents + self._builder.docs.count_documents(), chunks + self._builder.count()

    # -- changing it -------------------------------------------------------------------------------
    def delete_document(self, doc_id: str) -> int:
        """Remove a document's chunks; returns how many chunks were removed."""
        removed = self._builder.delete_document(doc_id)
        holder = self._holder(doc_id)
        if holder is not None:
            rids, docs = self._deleted.setdefault(holder.name, (set(), set()))
            found = [r for r in holder.docs.document_rids(doc_id) if holder.is_live(r)]
            rids.update(found)
            docs.add(doc_id)
            removed = (removed or 0) + len(found)
        if removed is not None:
            self._changed = True
        return removed or 0

    def add_document(
        self,
        doc_id: str,
        source: str,
        content_hash: str,
        chunks: Sequence[Chunk],
        vectors: np.ndarray,
        tokens: ChunkTerms | Sequence[Sequence[str]],
    ) -> None:
        """Add one document's chunks with their vectors and BM25 tokens (replacing an older version)."""
        terms = tokens if isinstance(tokens, ChunkTerms) else ChunkTerms.count(tokens)
        self.delete_document(doc_id)
        for offset, chunk in enumerate(chunks):
            chunk.rid = self._next_rid + offset
        self._next_rid += len(chunks)
        self._builder.add((doc_id, source, content_hash), chunks, vectors, terms)
        self._changed = True

    def commit(self, extra: dict[str, Any] | None = None) -> str:
        """Publish: the new segment, the deletions files, then the manifest listing them."""
        entries = []
        for segment in self._segments:
            entry = segment.entry
            if segment.name in self._deleted:
                entry = with_deletions(entry, segment, *self._deleted[segment.name])
            if entry.live_documents or entry.live_chunks:
                entries.append(entry)
        added = self._builder.publish(self.root, self.manifest["store"], self.connection)
        if added is not None:
            entries.append(added)
        return self._publish_segments(entries, extra)

    def _publish_segments(self, entries: list[SegmentEntry], extra: dict[str, Any] | None) -> str:
        self._counts = (sum(e.live_documents for e in entries), sum(e.live_chunks for e in entries))
        self.manifest.update(
            segments=[e.to_json() for e in entries],
            next_rid=self._next_rid,
            counts={"documents": self._counts[0], "chunks": self._counts[1]},
        )
        self._close_segments()
        shutil.rmtree(self.staging, ignore_errors=True)
        return self._publish(self._new_staging(), extra)

    def merge(self, policy: MergePolicy | None = None) -> str | None:
        """Merge the segments ``policy`` picks next into one and publish that; the version, or ``None`` (and
        the writer closed) when there is nothing to merge. Call it on a writer with nothing staged."""
        policy = policy or MergePolicy(max_deleted_rows=store_class(self.manifest["store"]["backend"]).max_excluded)
        plan = plan_merge([(s.entry.chunks, s.entry.deleted_chunks) for s in self._segments], policy)
        if not plan:
            self.abort()
            return None
        try:
            return self._merge_once(plan)
        except BaseException:
            self.abort()  # idempotent: after a publish there is nothing left to drop
            raise

    def rewrite(self, store: dict[str, Any], on_moved: Callable[[int], None] | None = None) -> str:
        """Move every live row into one new segment kept in ``store`` (another backend or layout) and
        publish it; the vectors are copied, not re-embedded."""
        self.manifest["store"] = {k: v for k, v in store.items() if k != "layout"}
        return self._merge_once(list(range(len(self._segments))), on_moved)

    def _merge_once(self, plan: list[int], on_moved: Callable[[int], None] | None = None) -> str:
        if self._changed or self._builder.count():
            raise ZhragIndexError("merge on a writer with staged changes; commit them first")
        chosen = [self._segments[i] for i in plan]
        sources = [
            SegmentSource(
                s.path / DOCSTORE_FILE,
                s.deleted,
                s.deleted_docs,
                _counted(s.load(self.dim, self._segments_store, self.connection).live_items(), on_moved),
            )
            for s in chosen
        ]
        merged = write_segment(
            self.root,
            self._new_staging(),
            sources,
            self.dim,
            self.manifest["store"],
            self.manifest["bm25"],
            self.connection,
        )
        entries = [s.entry for i, s in enumerate(self._segments) if i not in plan]
        if merged is not None:
            entries.insert(min(plan) if plan else 0, merged)
        return self._publish_segments(entries, {"merged_at": now()})

    def abort(self) -> None:
        """Drop the staged segment; the live version is untouched."""
        if self._counts is None and self.staging.exists():
            try:
                self._counts = self._live_counts()
            except Exception:  # noqa: BLE001 - counts are informational
                self._counts = (0, 0)
        self._builder.close()
        self._close_segments()
        shutil.rmtree(self.staging, ignore_errors=True)
        self._lock.release()

    def _close_segments(self) -> None:
        for segment in self._segments:
            segment.close()


def _new_manifest(
    embedder: dict[str, Any], store: dict[str, Any] | None, bm25: dict[str, float] | None
) -> dict[str, Any]:
    return {
        "format": SEGMENTED_FORMAT,
        "created_at": now(),
        "embedder": embedder,
        "dim": embedder["dim"],
        "store": {k: v for k, v in (store or {"backend": "faiss"}).items() if k != "layout"},
        "bm25": bm25 or {"k1": DEFAULT_K1, "b": DEFAULT_B},
        "next_rid": 0,
        "segments": [],
    }


def _counted(
    items: Iterator[tuple[np.ndarray, np.ndarray]], on_moved: Callable[[int], None] | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for ids, vectors in items:
        yield ids, vectors
        if on_moved is not None:
            on_moved(len(ids))


def merge_segments(
    root: Path | str,
    policy: MergePolicy | None = None,
    limit: int | None = None,
    connection: Mapping[str, str] | None = None,
) -> list[str]:
    """Merge an index's segments as the tiered ``policy`` says (``zhrag optimize``, or a server between
    writes); each merge is published as a version. Returns the versions published (none: nothing to do,
    or an index of the format before segments, which its next write upgrades).

    Raises:
        IndexLockedError: another writer holds the index.
    """
    published: list[str] = []
    while limit is None or len(published) < limit:
        manifest = read_manifest(root)
        if manifest.get("format") != SEGMENTED_FORMAT:
            break
        version = IndexWriter(root, manifest["embedder"], connection=connection).merge(policy)
        if version is None:
            break
        published.append(version)
    return published


def migrate_store(
    root: Path | str,
    store: dict[str, Any],
    on_moved: Callable[[int], None] | None = None,
    connection: Mapping[str, str] | None = None,
) -> str:
    """Move an index's vectors into another store (e.g. FAISS -> Milvus) without re-embedding them and
    publish the result as a new version; returns its name. The previous version serves until then.

    Args:
        root: The index.
        store: The new store's manifest entry, e.g. ``{"backend": "milvus", "uri": ..., "collection": ...}``.
        on_moved: Called with the number of vectors of each batch moved (a progress bar).
        connection: The stores' connection secrets (e.g. a Milvus ``token``), never written to the index.
    """
    manifest = read_manifest(root)
    with IndexWriter(root, manifest["embedder"], connection=connection) as writer:
        return writer.rewrite(store, on_moved)
