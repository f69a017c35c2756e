"""The embedder interface every backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Embedder", "EmbedderError", "normalize_rows", "truncate_dim"]


class EmbedderError(RuntimeError):
    """An embedder could not be loaded or did not answer as expected."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors (inner product == cosine)."""

    name: str
    """The model identifier recorded in the index manifest."""

    @property
    def dim(self) -> int:
        """Output dimension."""
        ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embed passages (no instruction)."""
        ...

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed queries (with the query instruction)."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts used for chunk sizes and ingest summaries."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the manifest records so the same embedder can be rebuilt for search."""
        ...


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
