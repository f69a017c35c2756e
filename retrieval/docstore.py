"""Chunk texts and metadata in SQLite, keyed by the integer row id the vector store uses."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.metadata_filter import SQL_NUMBER, FilterError, MetadataFilter, sql_number, to_sql
from retrieval.types import Chunk

__all__ = ["DocStore", "FilterError", "DOCSTORE_FILE"]

DOCSTORE_FILE = "chunks.sqlite"
_SQL_BATCH = 500
_TOKEN_BATCH = 4096
_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    rid INTEGER PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    doc_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    text TEXT NOT NULL,
    embed_text TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '',
    metadata TEXT NOT NULL DEFAULT '{}',
    tokens TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS ix_chunks_doc ON chunks(doc_id, seq);
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    chunks INTEGER NOT NULL
);
"""
_COLUMNS = "rid, id, doc_id, seq, text, embed_text, title, source, metadata"


def _name_filter(contains: str) -> tuple[str, tuple[str, ...]]:
    """A ``WHERE`` clause matching documents whose id or source holds ``contains`` (taken literally)."""
    if not contains:
        return "", ()
    pattern = "%" + contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return "WHERE (doc_id LIKE ? ESCAPE '\\' OR source LIKE ? ESCAPE '\\')", (pattern, pattern)


def _row_to_chunk(row: Sequence[Any]) -> Chunk:
    rid, cid, doc_id, seq, text, embed_text, title, source, metadata = row
    return Chunk(
        id=cid,
        doc_id=doc_id,
        seq=seq,
        text=text,
        embed_text=embed_text,
        title=title,
        source=source,
        metadata=json.loads(metadata),
        rid=rid,
    )


class DocStore:
    """SQLite table of chunks plus a table of ingested documents (for change detection)."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        if readonly:  # an immutable segment: never written, so no journal file appears beside it
            self._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        else:
            self._db = sqlite3.connect(str(path), check_same_thread=False)
            self._db.executescript(_SCHEMA)
        self._db.create_function(SQL_NUMBER, 1, sql_number, deterministic=True)
        # One connection serves the API's worker threads; sqlite3 connections need serialised use.
        self._lock = threading.RLock()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _write(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._lock:
            self._db.execute(sql, params)

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def rid_range(self) -> tuple[int, int]:
        """The lowest and highest row id held (``(0, -1)`` when empty)."""
        # bare MIN/MAX of the primary key: SQLite reads one end of the b-tree (wrapped, it scans them all)
        ((low,),) = self._query("SELECT MIN(rid) FROM chunks")
        ((high,),) = self._query("SELECT MAX(rid) FROM chunks")
        return (0, -1) if low is None else (int(low), int(high))

    def next_rid(self) -> int:
        """The next free row id."""
        ((value,),) = self._query("SELECT COALESCE(MAX(rid), -1) + 1 FROM chunks")
        return int(value)

    def add(self, chunks: Sequence[Chunk], tokens: Sequence[str]) -> None:
        """Insert chunks (their ``rid`` must be set) with their BM25 tokens (space-joined)."""
        rows = [
            (
                c.rid,
                c.id,
                c.doc_id,
                c.seq,
                c.text,
                c.embed_text,
                c.title,
                c.source,
                json.dumps(c.metadata, ensure_ascii=False),
                t,
            )
            for c, t in zip(chunks, tokens, strict=True)
        ]
        with self._lock:
            self._db.executemany(f"INSERT INTO chunks ({_COLUMNS}, tokens) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)

    def set_document(self, doc_id: str, source: str, content_hash: str, chunks: int) -> None:
        """Record a document's content hash."""
        self._write("INSERT OR REPLACE INTO documents VALUES (?,?,?,?)", (doc_id, source, content_hash, chunks))

    def document(self, doc_id: str) -> tuple[str, str, int] | None:
        """(source, content hash, chunks) of an ingested document."""
        rows = self._query("SELECT source, content_hash, chunks FROM documents WHERE doc_id=?", (doc_id,))
        return (rows[0][0], rows[0][1], int(rows[0][2])) if rows else None

    def document_hash(self, doc_id: str) -> str | None:
        """The stored content hash of a document, if ingested."""
        rows = self._query("SELECT content_hash FROM documents WHERE doc_id=?", (doc_id,))
        return rows[0][0] if rows else None

    def document_hashes(self) -> dict[str, str]:
        """Content hash of every ingested document, by id."""
        return dict(self._query("SELECT doc_id, content_hash FROM documents"))

    def list_documents(self, offset: int = 0, limit: int = 100, contains: str = "") -> list[tuple[str, str, int]]:
        """(doc_id, source, chunks) of a page of documents, ordered by id; with ``contains``, only those whose
        id or source holds that text."""
        where, params = _name_filter(contains)
        rows = self._query(
            f"SELECT doc_id, source, chunks FROM documents {where} ORDER BY doc_id LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [(d, s, int(n)) for d, s, n in rows]

    def count_matching(self, contains: str, among: Sequence[str] | None = None) -> int:
        """Documents whose id or source holds ``contains`` (of ``among`` ids, when given)."""
        where, params = _name_filter(contains)
        if among is None:
            return int(self._query(f"SELECT COUNT(*) FROM documents {where}", params)[0][0])
        total = 0
        for i in range(0, len(among), _SQL_BATCH):
            part = list(among[i : i + _SQL_BATCH])
            marks = ",".join("?" * len(part))
            sql = f"SELECT COUNT(*) FROM documents {where or 'WHERE 1'} AND doc_id IN ({marks})"
            total += int(self._query(sql, (*params, *part))[0][0])
        return total

    def document_pages(self, doc_id: str) -> int | None:
        """The last page any chunk of a paged source (PDF, scan) comes from; ``None`` for other sources."""
        rows = self._query("SELECT MAX(json_extract(metadata, '$.pages[1]')) FROM chunks WHERE doc_id=?", (doc_id,))
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def document_ids(self) -> list[str]:
        """Ids of all ingested documents."""
        return [d for (d,) in self._query("SELECT doc_id FROM documents ORDER BY doc_id")]

    def document_rids(self, doc_id: str) -> list[int]:
        """Row ids of a document's chunks."""
        return [r for (r,) in self._query("SELECT rid FROM chunks WHERE doc_id=? ORDER BY rid", (doc_id,))]

    def copy_live(self, sources: Sequence[tuple[Path, np.ndarray, Sequence[str]]]) -> None:
        """Insert the rows of other docstores (a merge): per source its path, the row ids and the document
        ids to leave out (deleted there)."""
        with self._lock:
            for i, (path, deleted_rids, deleted_docs) in enumerate(sources):
                name = f"src{i}"
                self._db.execute(f"ATTACH DATABASE ? AS {name}", (f"{path.resolve().as_uri()}?mode=ro",))
                try:
                    self._db.execute("CREATE TEMP TABLE gone_rids (rid INTEGER PRIMARY KEY)")
                    self._db.execute("CREATE TEMP TABLE gone_docs (doc_id TEXT PRIMARY KEY)")
                    self._db.executemany("INSERT INTO gone_rids VALUES (?)", ((int(r),) for r in deleted_rids))
                    self._db.executemany("INSERT INTO gone_docs VALUES (?)", ((d,) for d in deleted_docs))
                    self._db.execute(
                        f"INSERT INTO chunks ({_COLUMNS}, tokens) SELECT {_COLUMNS}, tokens FROM {name}.chunks "
                        "WHERE rid NOT IN (SELECT rid FROM gone_rids)"
                    )
                    self._db.execute(
                        f"INSERT INTO documents (doc_id, source, content_hash, chunks) "
                        f"SELECT doc_id, source, content_hash, chunks FROM {name}.documents "
                        "WHERE doc_id NOT IN (SELECT doc_id FROM gone_docs)"
                    )
                    self._db.commit()
                finally:
                    self._db.execute("DROP TABLE IF EXISTS temp.gone_rids")
                    self._db.execute("DROP TABLE IF EXISTS temp.gone_docs")
                    self._db.execute(f"DETACH DATABASE {name}")

    def delete_document(self, doc_id: str) -> list[int]:
        """Remove a document's chunks; returns their row ids (to delete from the other stores)."""
        rids = [r for (r,) in self._query("SELECT rid FROM chunks WHERE doc_id=?", (doc_id,))]
        self._write("DELETE FROM chunks WHERE doc_id=?", (doc_id,))
        self._write("DELETE FROM documents WHERE doc_id=?", (doc_id,))
        return rids

    def commit(self) -> None:
        """Commit pending writes."""
        self._db.commit()

    def count(self) -> int:
        """Number of chunks."""
        return int(self._query("SELECT COUNT(*) FROM chunks")[0][0])

    def count_documents(self, contains: str = "") -> int:
        """Number of documents (whose id or source holds ``contains``, when given)."""
        return self.count_matching(contains)

    def get(self, rids: Iterable[int]) -> dict[int, Chunk]:
        """Chunks by row id."""
        rids = [int(r) for r in rids]
        out: dict[int, Chunk] = {}
        for i in range(0, len(rids), _SQL_BATCH):
            part = rids[i : i + _SQL_BATCH]
            marks = ",".join("?" * len(part))
            for row in self._query(f"SELECT {_COLUMNS} FROM chunks WHERE rid IN ({marks})", part):
                out[row[0]] = _row_to_chunk(row)
        return out

    def document_chunks(self, doc_id: str) -> list[Chunk]:
        """All chunks of a document, in order."""
        rows = self._query(f"SELECT {_COLUMNS} FROM chunks WHERE doc_id=? ORDER BY seq", (doc_id,))
        return [_row_to_chunk(r) for r in rows]

    def iter_fields(self) -> Iterator[tuple[int, str, str, dict[str, Any]]]:
        """(row id, doc_id, title, metadata) of every chunk, by row id (qrels ids, the citation index)."""
        for rid, doc_id, title, metadata in self._query("SELECT rid, doc_id, title, metadata FROM chunks ORDER BY rid"):
            yield rid, doc_id, title, json.loads(metadata)

    def iter_tokens(self, below: int | None = None) -> Iterator[tuple[list[int], list[list[str]]]]:
        """(row ids, BM25 tokens) of every chunk (with row id < ``below``), by row id, in batches."""
        sql = "SELECT rid, tokens FROM chunks" + (" WHERE rid < ?" if below is not None else "") + " ORDER BY rid"
        with self._lock:
            cursor = self._db.execute(sql, () if below is None else (below,))
        while True:
            with self._lock:
                part = cursor.fetchmany(_TOKEN_BATCH)
            if not part:
                return
            yield [r for r, _ in part], [t.split() for _, t in part]

    def filter_rids(self, spec: MetadataFilter) -> np.ndarray:
        """Row ids of the chunks a filter admits, ascending (see :mod:`retrieval.metadata_filter`).

        Raises:
            FilterError: for a malformed filter.
        """
        where, params = to_sql(spec)
        rows = self._query(f"SELECT rid FROM chunks WHERE {where} ORDER BY rid", params)
        return np.fromiter((r for (r,) in rows), dtype=np.int64)

    def backup_to(self, path: Path) -> None:
        """Copy the database to ``path`` consistently (SQLite backup API)."""
        target = sqlite3.connect(str(path))
        with target:
            self._db.backup(target)
        target.close()
