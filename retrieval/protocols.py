"""The interfaces the searcher, the query builder and the ingest pipeline program against.

Kept together and below the code that uses them: a backend (an embedder, a store, a reranker, a rewriter)
implements one of these and imports this module, never the searcher or the builder.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from retrieval.embedders.tokens import TokenSpec

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

    # Optional capabilities: ``retrieval.embedders.base.EmbedderBase`` gives each an explicit default.
    takes_token_ids: bool
    """Whether :meth:`embed_token_ids` takes pre-tokenised batches (a local model; not through a cache)."""

    @property
    def device(self) -> str:
        """Where the model runs (``cpu``, ``cuda:0``; ``remote`` for a server)."""
        ...

    @property
    def token_spec(self) -> TokenSpec | None:
        """The model's tokenizer when it is local (chunk sizes are measured in its tokens), else ``None``."""
        ...

    def embed_token_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Embed one batch of model input ids (when :attr:`takes_token_ids`)."""
        ...

    def on_device(self, device: str) -> Embedder:
        """A replica on ``device`` (several GPUs at ingest); refused by remote and wrapped embedders."""
        ...

    def submit_queries(self, texts: Sequence[str]) -> Future[np.ndarray]:
        """Query vectors as a future: queued with others by a micro-batcher, else computed now."""
        ...

    def close(self) -> None:
        """Release workers and connections."""
        ...


@runtime_checkable
class VectorStore(Protocol):
    """Inner-product search over L2-normalised vectors keyed by int64 ids.

    Every capability a store may have is listed here; ``retrieval.stores.base.StoreBase`` gives the optional
    ones (from ``describe`` on) explicit defaults, so callers never probe for them.
    """

    dim: int
    external: bool
    """Whether the vectors live outside the index directory (a Milvus server): a segment's store there is a
    collection of its own, which :meth:`discard` and :meth:`sweep` release."""
    max_excluded: int | None
    """The most ``excluded`` ids one search takes (``None``: no limit); a segment with more deletions than
    that is rewritten by the merge policy."""

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under the given ids (ids must be new)."""
        ...

    def delete(self, ids: np.ndarray) -> int:
        """Remove ids; returns how many were present."""
        ...

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, excluded: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query row, best first; ``allowed`` restricts to those ids and
        ``excluded`` ids (a segment's deleted chunks) are never returned, both filtered inside the search so
        ``k`` results come back when that many qualify."""
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

    def describe(self) -> dict[str, Any] | None:
        """The manifest's store entry as built (e.g. the layout ``auto`` resolved to); ``None``: as configured."""
        ...

    def close(self) -> None:
        """Release connections (a server's store); nothing for files."""
        ...

    def drop(self) -> None:
        """Forget what this store holds outside the index directory (a segment that was never published)."""
        ...


class LexicalIndex(Protocol):
    """The searcher's BM25 leg (``retrieval.bm25``): over a version's segments, or one prebuilt index."""

    location: str
    """Where it runs (``local``: in the serving process)."""

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
