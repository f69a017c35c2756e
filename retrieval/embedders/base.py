"""What every embedder backend shares: its error and the vector normalisation helpers (the interface is
``retrieval.protocols.Embedder``)."""

from __future__ import annotations

import numpy as np

__all__ = ["EmbedderError", "normalize_rows", "truncate_dim"]


class EmbedderError(RuntimeError):
    """An embedder could not be loaded or did not answer as expected."""


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise rows as float32; zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)


def truncate_dim(vectors: np.ndarray, dim: int | None) -> np.ndarray:
    """Matryoshka truncation: keep the first ``dim`` components, then re-normalise."""
    if dim is None or dim >= vectors.shape[1]:
        return normalize_rows(vectors)
    return normalize_rows(vectors[:, :dim])
