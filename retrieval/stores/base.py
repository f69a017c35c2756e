"""What every vector store shares: a base class with the optional capabilities' defaults, its error, the
empty-slot id and input checks (the interface is ``retrieval.protocols.VectorStore``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from retrieval.errors import UserError

__all__ = ["StoreBase", "StoreError", "MISSING_ID", "check_vectors"]

MISSING_ID = -1
"""Id reported for an empty result slot (fewer than ``k`` vectors matched)."""


class StoreError(UserError, RuntimeError):
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
    external: ClassVar[bool] = False
    max_excluded: ClassVar[int | None] = None

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
        """Release what a removed directory at ``path`` holds outside it: nothing by default."""
        return None  # the default: nothing to do

    @classmethod
    def sweep(cls, conf: dict[str, Any], listed: Iterable[Path], **connection: Any) -> None:
        """Release what a dead writer left outside the index for store ``conf`` that none of the ``listed``
        directories uses: nothing by default."""
        return None  # the default: nothing to do

    def describe(self) -> dict[str, Any] | None:
        """As configured: the manifest's entry stays."""
        return None

    def close(self) -> None:
        """No connection to release."""
        return None  # the default: nothing to do

    def drop(self) -> None:
        """Nothing outside the directory it is saved in to forget."""
        return None  # the default: nothing to do
