"""An index directory: versioned snapshots swapped atomically, so a failed write never breaks serving.

Layout::

    DIR/CURRENT            name of the live version (replaced atomically)
    DIR/v-<time>-<rand>/   manifest.json, chunks.sqlite, vectors.*, bm25/ (milvus.json: the version's
                           vector and BM25 collections when they live in Milvus)
    DIR/.staging-*/        a write in progress (removed on failure, or by the next writer if it died)
    DIR/.writer.lock       held by the one writer at a time (a POSIX lock: released when its process dies)

Writers copy the live version into a staging directory, change it, fsync it, rename it into place and
then replace ``CURRENT``. Readers read ``CURRENT`` once and open that version; the previous version is
kept for running readers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.bm25 import BM25_DIR, DEFAULT_B, DEFAULT_K1, BM25Builder, BM25Index, ChunkTerms
from retrieval.docstore import DOCSTORE_FILE, DocStore
from retrieval.protocols import LexicalIndex, VectorStore
from retrieval.stores import create_store, discard_store, load_store
from retrieval.types import Chunk

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
    "migrate_store",
    "reserve_writer",
    "remove_dead_staging",
    "UPLOAD_PREFIX",
    "MANIFEST_FILE",
    "FORMAT_VERSION",
]

MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "CURRENT"
LOCK_FILE = ".writer.lock"
FORMAT_VERSION = 1
_STAGING_PREFIX = ".staging-"
_VERSION_PREFIX = "v-"


class ZhragIndexError(RuntimeError):
    """Base class of index errors."""


class IndexNotFoundError(ZhragIndexError):
    """No index at the given directory."""


class IndexMismatchError(ZhragIndexError):
    """The index was built with a different embedder (model or dimension) than the one given."""


class IndexLockedError(ZhragIndexError):
    """Another writer holds the index."""


class _WriterLock:
    """One writer per index: an exclusive POSIX lock on ``DIR/.writer.lock``, plus an in-process registry.

    POSIX record locks belong to the process (not to forked children) and vanish when it dies, so a
    crashed or killed writer never leaves the index locked. Within one process they do not exclude each
    other, hence the registry of roots this process is writing.
    """

    _held: set[str] = set()
    _reserved: dict[str, _WriterLock] = {}
    _guard = threading.Lock()

    @classmethod
    def take(cls, root: Path) -> _WriterLock:
        """The lock this process reserved for ``root`` (:func:`reserve_writer`), else a new one."""
        with cls._guard:
            reserved = cls._reserved.pop(str(root.resolve()), None)
        return reserved if reserved is not None and reserved._fd is not None else cls(root)

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_FILE
        self._key = str(root.resolve())
        with self._guard:
            if self._key in self._held:
                raise IndexLockedError(f"this process is already writing to {root}; one writer at a time")
            self._held.add(self._key)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if sys.platform == "win32":  # no POSIX locks there
            return
        import fcntl

        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self.path.read_text(encoding="utf-8").strip() or "another process"
            self.release()
            raise IndexLockedError(
                f"another ingest is writing to {root} ({holder}); wait for it to finish, then run this one again"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"pid {os.getpid()}, since {_now()}".encode())

    def release(self) -> None:
        """Give the lock up (closing the file releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            with self._guard:
                self._held.discard(self._key)


@contextlib.contextmanager
def reserve_writer(root: Path | str) -> Iterator[None]:
    """Take the index's writer lock now, for the writer this process opens next: a command refuses a
    second writer at once, before the minutes of loading a model. Released on leaving, if no writer took it.

    Raises:
        IndexLockedError: another writer holds the index.
    """
    root = Path(root)
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    lock = _WriterLock(root)
    key = str(root.resolve())
    with _WriterLock._guard:
        _WriterLock._reserved[key] = lock
    try:
        yield
    finally:
        with _WriterLock._guard:
            unused = _WriterLock._reserved.pop(key, None)
        if unused is not None:
            unused.release()
        if created and [p.name for p in root.iterdir()] == [LOCK_FILE]:  # nothing was written: no trace left
            shutil.rmtree(root, ignore_errors=True)


UPLOAD_PREFIX = "_upload-"
"""Directories the API saves uploads in before ingesting them (inside the index, so they are cleaned up too)."""


def remove_dead_staging(root: Path | str) -> list[str]:
    """Remove what dead writers left (``.staging-*``, ``_upload-*``) when no writer holds the index; returns
    the names removed. A server calls it at start-up: one killed mid-upload leaves hundreds of MB."""
    root = Path(root)
    if not root.is_dir():
        return []
    try:
        lock = _WriterLock(root)
    except IndexLockedError:
        return []  # a live writer: its staging is its own
    try:
        return _remove_left_over(root, (_STAGING_PREFIX, UPLOAD_PREFIX))
    finally:
        lock.release()


def _remove_left_over(root: Path, prefixes: tuple[str, ...]) -> list[str]:
    """Remove the directories under ``root`` named with one of ``prefixes`` (the caller holds the writer lock,
    so their writers are dead); returns their names."""
    stale = [p for p in root.iterdir() if p.name.startswith(prefixes) and p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return [p.name for p in stale]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fsync_tree(path: Path) -> None:
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file atomically: write a temporary file, fsync, rename over the target, fsync the dir."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _current_version(root: Path) -> Path | None:
    current = root / CURRENT_FILE
    if not current.is_file():
        return None
    version = root / current.read_text(encoding="utf-8").strip()
    if not (version / MANIFEST_FILE).is_file():
        raise ZhragIndexError(f"{current} points to {version.name}, which has no {MANIFEST_FILE}")
    return version


def current_version(root: Path | str) -> str | None:
    """The name of the live version (cheap: one small file read), or ``None`` without an index."""
    try:
        return (Path(root) / CURRENT_FILE).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def read_manifest(root: Path | str) -> dict[str, Any]:
    """The manifest of the live version of the index at ``root``.

    Raises:
        IndexNotFoundError: when ``root`` holds no index.
    """
    return _live(Path(root))[1]


def _live(root: Path) -> tuple[Path, dict[str, Any]]:
    """The live version's directory and manifest, from one read of ``CURRENT``."""
    version = _current_version(root)
    if version is None:
        raise IndexNotFoundError(f"no zhrag index at {root} (run `zhrag ingest PATH --index {root}` first)")
    return version, json.loads((version / MANIFEST_FILE).read_text(encoding="utf-8"))


def check_embedder(manifest: dict[str, Any], model: str | None, dim: int | None) -> None:
    """Raise :class:`IndexMismatchError` when ``model``/``dim`` differ from what built the index."""
    built = manifest["embedder"]
    if model is not None and model != built["model"]:
        raise IndexMismatchError(
            f"index was built with embedding model {built['model']!r}, not {model!r}; "
            "search with the same model or re-ingest into a new index"
        )
    if dim is not None and dim != manifest["dim"]:
        raise IndexMismatchError(
            f"index holds {manifest['dim']}-d vectors but the embedder produces {dim}-d vectors "
            f"(model {built['model']!r})"
        )


def _load_store(version: Path, manifest: dict[str, Any], connection: Mapping[str, str] | None = None) -> VectorStore:
    store_conf = dict(manifest["store"])
    backend = store_conf.pop("backend")
    return load_store(backend, version, manifest["dim"], **store_conf, **(connection or {}))


class LiveDocs:
    """The live version's manifest and chunks, without its vectors or BM25: what listing documents and
    checking citations read (opens in milliseconds whatever the index's size)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.version_dir, self.manifest = _live(self.root)  # manifest and data come from the same version
        if self.manifest.get("format") != FORMAT_VERSION:
            raise ZhragIndexError(f"index format {self.manifest.get('format')} is not supported by this zhrag")
        self.docs = DocStore(self.version_dir / DOCSTORE_FILE)

    @property
    def version(self) -> str:
        """The name of the version this view opened."""
        return self.version_dir.name

    def close(self) -> None:
        """Release the docstore connection."""
        self.docs.close()


class Index(LiveDocs):
    """A read-only view of the live version of an index.

    Args:
        root: The index directory.
        connection: The store's connection secrets, never written to the index (e.g. a Milvus ``token``).
    """

    def __init__(self, root: Path | str, connection: Mapping[str, str] | None = None) -> None:
        super().__init__(root)
        self.store = _load_store(self.version_dir, self.manifest, connection)
        bm25_dir = self.version_dir / BM25_DIR
        self.bm25: LexicalIndex | None
        if bm25_dir.is_dir():
            self.bm25 = BM25Index.load(bm25_dir)
        else:  # the store may keep the BM25 leg itself (Milvus)
            self.bm25 = self.store.bm25_index()

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.manifest["dim"])

    def close(self) -> None:
        """Release the docstore connection (and the vector store's, where it holds one)."""
        super().close()
        self.store.close()


class IndexWriter:
    """Stage changes to an index and publish them atomically with :meth:`commit`.

    Args:
        root: Index directory (created if missing).
        embedder: Manifest entry of the embedder (``describe()``); must match an existing index.
        store: Vector store backend and options for a new index, e.g. ``{"backend": "faiss"}``.
        settings: Extra manifest fields (chunker, analyzer, ...).
        connection: The store's connection secrets, never written to the index (e.g. a Milvus ``token``).
    """

    def __init__(
        self,
        root: Path | str,
        embedder: dict[str, Any],
        store: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
        bm25: dict[str, float] | None = None,
        connection: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.connection = dict(connection or {})
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = _WriterLock.take(self.root)
        _remove_left_over(self.root, (_STAGING_PREFIX,))  # we hold the lock: their writers are dead
        previous = _current_version(self.root)
        self._base = previous.name if previous else ""
        if previous is not None:
            self._remove_unpublished(previous)
        self.staging = self.root / f"{_STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        self.staging.mkdir()
        try:
            if previous is not None:
                self.manifest = json.loads((previous / MANIFEST_FILE).read_text(encoding="utf-8"))
                check_embedder(self.manifest, embedder["model"], embedder["dim"])
                source = DocStore(previous / DOCSTORE_FILE)
                try:
                    source.backup_to(self.staging / DOCSTORE_FILE)
                finally:
                    source.close()
                self.store = _load_store(previous, self.manifest, self.connection)
                self.store.begin_write(self._versions())  # a store outside the directory: a new generation
            else:
                self.manifest = {
                    "format": FORMAT_VERSION,
                    "created_at": _now(),
                    "embedder": embedder,
                    "dim": embedder["dim"],
                    "store": store or {"backend": "faiss"},
                    "bm25": bm25 or {"k1": DEFAULT_K1, "b": DEFAULT_B},
                }
                store_conf = dict(self.manifest["store"])
                backend = store_conf.pop("backend")
                self.store = create_store(backend, embedder["dim"], **store_conf, **self.connection)
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
        self._changed = False
        self._counts: tuple[int, int] | None = None

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

    def document_hash(self, doc_id: str) -> str | None:
        """Stored content hash of a document (``None`` if new)."""
        return self.docs.document_hash(doc_id)

    def document_hashes(self) -> dict[str, str]:
        """Content hash of every document in the staged index, by id."""
        return self.docs.document_hashes()

    def docs_count(self) -> int:
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

    def replace_store(self, store: VectorStore, conf: dict[str, Any]) -> None:
        """Publish ``store`` (holding the same ids) instead of the current one; ``conf`` is its manifest entry."""
        self.store.drop()  # the new generation this writer opened in an external store
        self.store = store
        self.manifest["store"] = dict(conf)
        self._changed = True

    def commit(self, extra: dict[str, Any] | None = None) -> str:
        """Publish the staged index; returns the new version name.

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
        if built_as is not None:  # e.g. the FAISS layout ``auto`` resolved to
            self.manifest["store"] = built_as
        self.manifest.update(extra or {})
        self.manifest["updated_at"] = _now()
        self.manifest["previous_version"] = self._base or None  # kept by the next prune, whatever the names
        self._counts = (self.docs.count_documents(), self.docs.count())
        self.manifest["counts"] = {"documents": self._counts[0], "chunks": self._counts[1]}
        self.docs.close()
        (self.staging / MANIFEST_FILE).write_text(
            json.dumps(self.manifest, ensure_ascii=False, indent=2), encoding="utf-8"
        )
        _fsync_tree(self.staging)
        name = f"{_VERSION_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        os.replace(self.staging, self.root / name)
        _fsync_dir(self.root)
        atomic_write_text(self.root / CURRENT_FILE, name + "\n")
        self._prune(name)
        self._lock.release()
        return name

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

    def _versions(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.name.startswith(_VERSION_PREFIX) and p.is_dir())

    def _prune(self, live: str) -> None:
        """Keep the version just published and the one that was live before it (``CURRENT`` said so when
        this writer took the lock); remove every other, an orphan a crashed writer renamed but never
        published included — whatever their names sort as."""
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
        """Remove every version not named in ``keep`` (releasing what it holds in an external store)."""
        versions = self._versions()
        kept = [v for v in versions if v.name in keep]
        for version in versions:
            if version.name not in keep:
                if why:
                    log.warning("removing %s: %s", version.name, why)
                self._remove_version(version, kept)

    def _remove_version(self, version: Path, kept: list[Path]) -> None:
        try:
            backend = json.loads((version / MANIFEST_FILE).read_text(encoding="utf-8"))["store"]["backend"]
            discard_store(backend, version, kept, **self.connection)
        except Exception as exc:  # noqa: BLE001 - pruning is best effort; the data stays consistent
            log.warning("could not release the store of %s: %s", version.name, exc)
        shutil.rmtree(version, ignore_errors=True)


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
    conf = dict(store)
    with IndexWriter(root, manifest["embedder"], connection=connection) as writer:
        target = create_store(conf.pop("backend"), int(manifest["dim"]), **conf, **(connection or {}))
        moved = 0
        for ids, vectors in writer.store.items():
            target.add(ids, vectors)
            moved += len(ids)
            if on_moved is not None:
                on_moved(len(ids))
        if moved != writer.docs_count():
            raise ZhragIndexError(f"moved {moved} vectors but the index holds {writer.docs_count()} chunks")
        writer.replace_store(target, store)
        return writer.commit()
