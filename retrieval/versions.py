"""An index directory's versions and the plumbing every writer shares: ``CURRENT``, the one-writer lock,
durable writes, the manifest of the live version and the index errors.

Layout::

    DIR/CURRENT            name of the live version (replaced atomically)
    DIR/v-<time>-<rand>/   a version: manifest.json (format 2 lists its segments; format 1 holds the whole
                           version: chunks.sqlite, vectors.*, bm25/, or milvus.json)
    DIR/segments/<name>/   immutable segments shared by the versions that list them (``retrieval.segments``)
    DIR/.staging-*/        a write in progress (removed on failure, or by the next writer if it died)
    DIR/.writer.lock       held by the one writer at a time (a POSIX lock: released when its process dies)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from retrieval.errors import UserError
from retrieval.process import WRITERS

MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "CURRENT"
LOCK_FILE = ".writer.lock"
WHOLE_FORMAT = 1
"""A version that holds all its data (the format before segments: read, and upgraded on the first write)."""
SEGMENTED_FORMAT = 2
"""A version that lists immutable segments and their deletions."""
STAGING_PREFIX = ".staging-"
VERSION_PREFIX = "v-"


class ZhragIndexError(UserError, RuntimeError):
    """Base class of index errors."""


class IndexNotFoundError(ZhragIndexError):
    """No index at the given directory."""


class IndexMismatchError(ZhragIndexError):
    """The index was built with a different embedder (model or dimension) than the one given."""


class IndexLockedError(ZhragIndexError):
    """Another writer holds the index."""


class WriterLock:
    """One writer per index: an exclusive POSIX lock on ``DIR/.writer.lock``, plus an in-process registry.

    POSIX record locks belong to the process (not to forked children) and vanish when it dies, so a
    crashed or killed writer never leaves the index locked. Within one process they do not exclude each
    other, hence the registry of roots this process is writing (:data:`retrieval.process.WRITERS`).
    """

    @classmethod
    def take(cls, root: Path) -> WriterLock:
        """The lock this process reserved for ``root`` (:func:`reserve_writer`), else a new one."""
        with WRITERS.guard:
            reserved = WRITERS.reserved.pop(str(root.resolve()), None)
        return reserved if reserved is not None and reserved._fd is not None else cls(root)

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_FILE
        self._key = str(root.resolve())
        with WRITERS.guard:
            if self._key in WRITERS.held:
                raise IndexLockedError(f"this process is already writing to {root}; one writer at a time")
            WRITERS.held.add(self._key)
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
        os.write(self._fd, f"pid {os.getpid()}, since {now()}".encode())

    def release(self) -> None:
        """Give the lock up (closing the file releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            with WRITERS.guard:
                WRITERS.held.discard(self._key)


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
    lock = WriterLock(root)
    key = str(root.resolve())
    with WRITERS.guard:
        WRITERS.reserved[key] = lock
    try:
        yield
    finally:
        with WRITERS.guard:
            unused = WRITERS.reserved.pop(key, None)
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
        lock = WriterLock(root)
    except IndexLockedError:
        return []  # a live writer: its staging is its own
    try:
        return remove_left_over(root, (STAGING_PREFIX, UPLOAD_PREFIX))
    finally:
        lock.release()


def remove_left_over(root: Path, prefixes: tuple[str, ...]) -> list[str]:
    """Remove the directories under ``root`` named with one of ``prefixes`` (the caller holds the writer lock,
    so their writers are dead); returns their names."""
    stale = [p for p in root.iterdir() if p.name.startswith(prefixes) and p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return [p.name for p in stale]


def now() -> str:
    """The time now, as the manifest records it."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fsync_tree(path: Path) -> None:
    """Flush every file and directory under ``path`` to disk."""
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            fsync_file(Path(dirpath) / name)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename into it) to disk (a directory opens read-only like a file)."""
    fsync_file(path)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file atomically: write a temporary file, fsync, rename over the target, fsync the dir."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def current_version_dir(root: Path) -> Path | None:
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
    return live_version(Path(root))[1]


def live_version(root: Path) -> tuple[Path, dict[str, Any]]:
    """The live version's directory and manifest, from one read of ``CURRENT``."""
    version = current_version_dir(root)
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


def version_dirs(root: Path) -> list[Path]:
    """Every version directory on disk, by name."""
    return sorted(p for p in root.iterdir() if p.name.startswith(VERSION_PREFIX) and p.is_dir())


def fsync_file(path: Path) -> None:
    """Flush one file to disk."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
