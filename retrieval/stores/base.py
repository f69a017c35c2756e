"""The vector-store interface: add / delete / search / save / load / count over int64 ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["VectorStore", "StoreError", "MISSING_ID"]

MISSING_ID = -1
"""Id reported for an empty result slot (fewer than ``k`` vectors matched)."""


class StoreError(RuntimeError):
    """A vector store could not be created, loaded or queried."""


@runtime_checkable
class VectorStore(Protocol):
    """Inner-product search over L2-normalised vectors keyed by int64 ids."""

    dim: int

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under the given ids (ids must be new)."""
        ...

    def delete(self, ids: np.ndarray) -> int:
        """Remove ids; returns how many were present."""
        ...

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query row, best first; ``allowed`` restricts to those ids."""
        ...

    def save(self, path: Path) -> None:
        """Write the store to ``path`` (a directory); callers make it atomic."""
        ...

    def count(self) -> int:
        """Number of stored vectors."""
        ...

    def items(self, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every stored (ids, vectors), in batches (to move an index to another store without re-embedding)."""
        ...


def check_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Validate shape and return contiguous float32 rows."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise StoreError(f"expected vectors of shape (n, {dim}), got {vectors.shape}")
    return vectors
