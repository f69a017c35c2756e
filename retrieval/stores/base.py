"""What every vector store shares: a base class with the optional capabilities' defaults, its error, the
empty-slot id and input checks (the interface is ``retrieval.protocols.VectorStore``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from retrieval.protocols import LexicalIndex

__all__ = ["StoreBase", "StoreError", "MISSING_ID", "check_vectors"]

MISSING_ID = -1
"""Id reported for an empty result slot (fewer than ``k`` vectors matched)."""


class StoreError(RuntimeError):
    """A vector store could not be created, loaded or queried."""


def check_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Validate shape and return contiguous float32 rows."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise StoreError(f"expected vectors of shape (n, {dim}), got {vectors.shape}")
    return vectors


class StoreBase(ABC):
    """A vector store: the required operations are abstract; the optional capabilities of
    ``retrieval.protocols.VectorStore`` have explicit defaults — a store kept in the version directory, with
    no connection, no generations and no BM25 of its own. One backend per module subclasses it."""

    dim: int
    keeps_bm25: bool = False
    external: ClassVar[bool] = False

    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under new ids."""

    @abstractmethod
    def delete(self, ids: np.ndarray) -> int:
        """Remove ids; how many were present."""

    @abstractmethod
    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, excluded: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query, best first, among ``allowed`` and never ``excluded``."""

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write the store into the version directory ``path``."""

    @abstractmethod
    def count(self) -> int:
        """Stored vectors."""

    @abstractmethod
    def items(self, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every (ids, vectors), in batches."""

    @classmethod
    @abstractmethod
    def load(cls, path: Path, dim: int, **options: Any) -> StoreBase:
        """The store saved in ``path``."""

    @classmethod
    def discard(cls, path: Path, kept: Iterable[Path], **connection: Any) -> None:
        """Release what a pruned version at ``path`` holds outside its directory: nothing by default."""
        return None  # the default: nothing to do

    def describe(self) -> dict[str, Any] | None:
        """As configured: the manifest's entry stays."""
        return None

    def close(self) -> None:
        """No connection to release."""
        return None  # the default: nothing to do

    def begin_write(self, versions: Iterable[Path]) -> None:
        """The store lives in the version directory: a writer edits its loaded copy."""
        return None  # the default: nothing to do

    def drop(self) -> None:
        """No generation outside the version directory to forget."""
        return None  # the default: nothing to do

    def put_bm25(self, index: Any) -> None:
        """Refused: this store keeps no BM25 (``keeps_bm25`` is false)."""
        raise StoreError(f"{type(self).__name__} keeps no BM25 index")

    def bm25_index(self) -> LexicalIndex | None:
        """None: the BM25 leg is a file beside the store."""
        return None
