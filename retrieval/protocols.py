"""The interfaces the searcher, the query builder and the ingest pipeline program against.

Kept together and below the code that uses them: a backend (an embedder, a store, a reranker, a rewriter)
implements one of these and imports this module, never the searcher or the builder.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Embedder", "VectorStore", "LexicalIndex", "Reranker", "Rewriter"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors (inner product == cosine)."""

    name: str
    """The model identifier recorded in the index manifest."""

    @property
    def instruction(self) -> str | None:
        """The task queries are embedded for (``Instruct: {task}``), recorded in the manifest; ``None`` for a
        model that takes none."""
        ...

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


class LexicalIndex(Protocol):
    """The searcher's BM25 leg: local (``retrieval.bm25.BM25Index``) or inside a store (Milvus)."""

    location: str
    """Where it runs: ``local`` or the store's name."""

    def count(self) -> int:
        """Number of indexed chunks."""
        ...

    def search(self, tokens: Sequence[str], k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, row ids) for one tokenised query."""
        ...

    def search_weighted(
        self, term_weights: Mapping[str, float], k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, row ids) scoring ``sum(weight * BM25 term score)``."""
        ...


class Reranker(Protocol):
    """Second-stage scorer: higher = more relevant."""

    name: str

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """One relevance score per passage."""
        ...


class Rewriter(Protocol):
    """Condenses a conversation into one standalone question (``None`` on failure)."""

    def rewrite(self, messages: Sequence[Mapping[str, str]]) -> str | None: ...
