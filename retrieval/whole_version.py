"""Whole versions, for an index whose vectors live in an external store (Milvus).

Such a version (format 1) holds its rows (``chunks.sqlite``) and BM25 in its own directory and points at its
own generation of the store's collections: a write copies the rows and opens a new generation, and the
version's BM25 is rebuilt over every chunk. Indexes kept in their own directory are written as segments
instead (``retrieval.index.SegmentWriter``).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.bm25 import BM25_DIR, DEFAULT_B, DEFAULT_K1, BM25Builder, ChunkTerms
from retrieval.docstore import DOCSTORE_FILE, DocStore
from retrieval.index import Index, IndexWriter, load_whole_store
from retrieval.stores import create_store
from retrieval.types import Chunk
from retrieval.versions import MANIFEST_FILE, WHOLE_FORMAT, ZhragIndexError, check_embedder, now, version_dirs

__all__ = ["WholeVersionWriter"]

log = logging.getLogger(__name__)


class WholeVersionWriter(IndexWriter):
    """Stage a whole version in an external store. Args as :class:`retrieval.index.IndexWriter`, plus
    ``store`` for an existing index: move its vectors into that store (a migration, ``on_moved`` counting
    them), from a whole or a segmented version."""

    def __init__(
        self,
        root: Path | str,
        embedder: dict[str, Any],
        store: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
        bm25: dict[str, float] | None = None,
        connection: Mapping[str, str] | None = None,
        on_moved: Callable[[int], None] | None = None,
    ) -> None:
        previous = self._open(root, connection)
        try:
            if previous is None:
                self.manifest = {
                    "format": WHOLE_FORMAT,
                    "created_at": now(),
                    "embedder": embedder,
                    "dim": embedder["dim"],
                    "store": store or {"backend": "faiss"},
                    "bm25": bm25 or {"k1": DEFAULT_K1, "b": DEFAULT_B},
                }
                self.store = _create(self.manifest["store"], embedder["dim"], self.connection)
            else:
                self.manifest = json.loads((previous / MANIFEST_FILE).read_text(encoding="utf-8"))
                check_embedder(self.manifest, embedder["model"], embedder["dim"])
                if store is not None and store != self.manifest["store"]:
                    self._move_into(store, on_moved)
                else:
                    self._copy_rows(previous)
            self.manifest.update(settings or {})
            self.docs = DocStore(self.staging / DOCSTORE_FILE)
        except BaseException:
            shutil.rmtree(self.staging, ignore_errors=True)
            self._lock.release()
            raise
        self._next_rid = self._first_new_rid = self.docs.next_rid()
        # BM25 terms of the chunks added by this writer are counted as they arrive; the unchanged
        # chunks of the previous version are read back from the docstore at commit.
        self._bm25 = BM25Builder(**self.manifest["bm25"])
        self._counts: tuple[int, int] | None = None

    def _copy_rows(self, previous: Path) -> None:
        source = DocStore(previous / DOCSTORE_FILE)
        try:
            source.backup_to(self.staging / DOCSTORE_FILE)
        finally:
            source.close()
        self.store = load_whole_store(previous, self.manifest, self.connection)
        self.store.begin_write(version_dirs(self.root))  # a store outside the directory: a new generation

    def _move_into(self, store: dict[str, Any], on_moved: Callable[[int], None] | None) -> None:
        """Start from every live row of the live version (either format), its vectors moved into ``store``."""
        view = Index(self.root, self.connection)
        try:
            docs = DocStore(self.staging / DOCSTORE_FILE)
            if view.segmented:
                docs.copy_live([(s.path / DOCSTORE_FILE, s.deleted, sorted(s.deleted_docs)) for s in view.segments])
            else:
                docs.copy_live([(view.version_dir / DOCSTORE_FILE, np.zeros(0, np.int64), [])])
            chunks = docs.count()
            docs.close()
            self.store = _create(store, view.dim, self.connection)
            moved = 0
            for ids, vectors in view.store.items():
                self.store.add(ids, vectors)
                moved += len(ids)
                if on_moved is not None:
                    on_moved(len(ids))
        finally:
            view.close()
        if moved != chunks:
            self.store.drop()
            raise ZhragIndexError(f"moved {moved} vectors but the index holds {chunks} chunks")
        for key in ("segments", "next_rid", "merged_at"):
            self.manifest.pop(key, None)
        self.manifest.update(format=WHOLE_FORMAT, store=dict(store))
        self._changed = True

    def document_hash(self, doc_id: str) -> str | None:
        """Stored content hash of a document (``None`` if new)."""
        return self.docs.document_hash(doc_id)

    def document_hashes(self) -> dict[str, str]:
        """Content hash of every document in the staged index, by id."""
        return self.docs.document_hashes()

    def hash_lookup(self) -> Mapping[str, str]:
        """Content hash per document of the version this writer started from."""
        return self.docs.document_hashes()

    def chunks_count(self) -> int:
        """Chunks in the staged index."""
        return self._counts[1] if self._counts else self.docs.count()

    def documents_count(self) -> int:
        """Documents in the staged index."""
        return self._counts[0] if self._counts else self.docs.count_documents()

    def document_ids(self) -> list[str]:
        """Ids of the documents in the staged index."""
        return self.docs.document_ids()

    def delete_document(self, doc_id: str) -> int:
        """Remove a document's chunks from every store; returns how many chunks were removed."""
        rids = self.docs.delete_document(doc_id)
        if rids:
            self.store.delete(np.asarray(rids, dtype=np.int64))
            self._bm25.discard(rids)
            self._changed = True
        return len(rids)

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
        rids = np.arange(self._next_rid, self._next_rid + len(chunks), dtype=np.int64)
        self._next_rid += len(chunks)
        for chunk, rid in zip(chunks, rids, strict=True):
            chunk.rid = int(rid)
        self.docs.add(chunks, terms.joined)
        self.store.add(rids, vectors)
        self._bm25.add(rids, terms)
        self.docs.set_document(doc_id, source, content_hash, len(chunks))
        self._changed = True

    def commit(self, extra: dict[str, Any] | None = None) -> str:
        """Publish the staged version; returns its name.

        Rebuilds BM25 over every chunk's stored tokens, writes everything, fsyncs, renames the staging
        directory into place and swaps ``CURRENT``. Older versions beyond the last two are removed.
        """
        self.docs.commit()
        for rids, tokens in self.docs.iter_tokens(below=self._first_new_rid):
            self._bm25.add(rids, ChunkTerms.count(tokens))
        if len(self._bm25):
            built = self._bm25.build()
            if self.store.keeps_bm25:
                self.store.put_bm25(built)
            else:
                built.save(self.staging / BM25_DIR)
        self.store.save(self.staging)
        built_as = self.store.describe()
        if built_as is not None:
            self.manifest["store"] = built_as
        self._counts = (self.docs.count_documents(), self.docs.count())
        self.manifest["counts"] = {"documents": self._counts[0], "chunks": self._counts[1]}
        self.docs.close()
        return self._publish(self.staging, extra)

    def abort(self) -> None:
        """Drop the staged changes; the live version is untouched."""
        if self._counts is None and self.staging.exists():
            try:
                self._counts = (self.docs.count_documents(), self.docs.count())
            except Exception:  # noqa: BLE001 - counts are informational
                self._counts = (0, 0)
        try:
            self.docs.close()
        except Exception:  # noqa: BLE001 - closing twice is harmless
            pass
        if self.staging.exists():  # the unpublished generation of an external store
            try:
                self.store.drop()
            except Exception as exc:  # noqa: BLE001 - the next writer drops orphans too
                log.warning("could not drop the unpublished store generation: %s", exc)
        shutil.rmtree(self.staging, ignore_errors=True)
        self._lock.release()


def _create(conf: Mapping[str, Any], dim: int, connection: Mapping[str, str]) -> Any:
    options = dict(conf)
    return create_store(options.pop("backend"), dim, **options, **connection)
