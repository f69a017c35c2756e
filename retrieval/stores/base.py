"""What every vector store shares: its error, the empty-slot id and input checks (the interface is
``retrieval.protocols.VectorStore``)."""

from __future__ import annotations

import numpy as np

__all__ = ["StoreError", "MISSING_ID", "check_vectors"]

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
