"""What one process shares between its threads, its open index versions and its commands, in one place.

This is the only module-level mutable state of ``retrieval`` and ``ingest``, except how a command stops
(``ingest.lifecycle``, which this package cannot import) and memoising caches (``functools.lru_cache``).
Each holder says why the state must be process-wide.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = [
    "WRITERS",
    "LOADED_SEGMENTS",
    "MILVUS_LITE_USERS",
    "SINGLETONS",
    "OCR_PAGES",
    "WriterRegistry",
    "SharedLoads",
    "Users",
    "Singletons",
    "Hook",
]

T = TypeVar("T")


class WriterRegistry:
    """The index roots this process writes, and writer locks taken early for the next writer. POSIX record
    locks do not exclude each other within one process, so the process keeps its own list."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.held: set[str] = set()
        self.reserved: dict[str, Any] = {}


WRITERS = WriterRegistry()


class SharedLoads(Generic[T]):
    """Immutable things read from disk once and shared by whoever holds them (a segment's vectors and
    postings, shared by the open versions that list it); forgotten when the last holder lets go."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: weakref.WeakValueDictionary[str, T] = weakref.WeakValueDictionary()

    def get(self, key: str) -> T | None:
        with self._lock:
            return self._loaded.get(key)

    def put(self, key: str, value: T) -> T:
        """Share ``value`` under ``key``; what another thread shared first wins, so both hold the same."""
        with self._lock:
            return self._loaded.setdefault(key, value)


LOADED_SEGMENTS: SharedLoads[Any] = SharedLoads()


class Users:
    """How many users each resource has in this process (a Milvus Lite file: its server is per process and
    must stop with its last client, so another process can open the file)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count: Counter[str] = Counter()

    def join(self, key: str) -> None:
        with self._lock:
            self._count[key] += 1

    def leave(self, key: str) -> bool:
        """One user fewer; whether it was the last."""
        with self._lock:
            self._count[key] -= 1
            return self._count[key] <= 0


MILVUS_LITE_USERS = Users()


class Singletons:
    """One object per name and process, built on first use by one thread (an OCR engine: its models are
    loaded once, not per file)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: dict[str, Any] = {}

    def get(self, name: str, build: Callable[[], T]) -> T:
        with self._lock:
            if name not in self._made:
                self._made[name] = build()
            return self._made[name]


SINGLETONS = Singletons()


class Hook:
    """A callback the process may set, read where the event happens (the ingest's OCR page progress)."""

    def __init__(self) -> None:
        self.callback: Callable[..., None] | None = None

    def __call__(self, *args: Any) -> None:
        if self.callback is not None:
            self.callback(*args)


OCR_PAGES = Hook()
"""Pages OCR'd: ``(done, total)`` deltas for the ingest's progress bar."""
