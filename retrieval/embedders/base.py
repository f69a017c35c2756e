"""What every embedder shares: a base class with the optional capabilities' defaults, a base for wrappers
that delegates each one explicitly, its error and the vector normalisation helpers (the interface is
``retrieval.protocols.Embedder``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.errors import UserError

if TYPE_CHECKING:
    from retrieval.embedders.tokens import TokenSpec

__all__ = ["EmbedderBase", "Delegating", "EmbedderError", "normalize_rows", "truncate_dim"]


class EmbedderError(UserError, RuntimeError):
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


class EmbedderBase(ABC):
    """An embedder: the required operations are abstract; the optional capabilities of
    ``retrieval.protocols.Embedder`` have explicit defaults — a remote model that takes text, with no query
    task of its own, no local tokenizer, one replica and nothing to release."""

    name: str
    instruction: str | None = None
    takes_token_ids: bool = False

    @property
    @abstractmethod
    def dim(self) -> int:
        """Output dimension."""

    @abstractmethod
    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Passage vectors."""

    @abstractmethod
    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Query vectors."""

    @abstractmethod
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The manifest entry."""

    @property
    def device(self) -> str:
        """Where the model runs: ``remote`` (a server)."""
        return "remote"

    @property
    def token_spec(self) -> TokenSpec | None:
        """No local tokenizer: chunk sizes fall back to characters and texts are sent as they are."""
        return None

    def embed_token_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Refused: this embedder takes text (``takes_token_ids`` is false)."""
        raise EmbedderError(f"{self.name} takes text, not token ids")

    def on_device(self, device: str) -> EmbedderBase:
        """Refused: a remote or wrapped model cannot be placed on a device."""
        raise EmbedderError(f"{self.name!r} cannot be placed on a device (--devices needs a local model)")

    def submit_queries(self, texts: Sequence[str]) -> Future[np.ndarray]:
        """Query vectors as a future, computed now (a micro-batcher queues them instead)."""
        future: Future[np.ndarray] = Future()
        try:
            future.set_result(self.embed_queries(texts))
        except Exception as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future

    def close(self) -> None:
        """Nothing to release."""
        return None  # the default: nothing to do


class Delegating(EmbedderBase):
    """An embedder in front of another (a cache, the micro-batcher): every member is the inner one's unless
    the wrapper says otherwise, each delegated by name — nothing passes through unannounced."""

    inner: EmbedderBase

    def __init__(self, inner: EmbedderBase) -> None:
        self.inner = inner
        self.name = inner.name

    @property
    def dim(self) -> int:
        """The inner embedder's dimension."""
        return self.inner.dim

    @property
    def instruction(self) -> str | None:  # type: ignore[override]
        """The inner embedder's query task."""
        return self.inner.instruction

    @property
    def takes_token_ids(self) -> bool:  # type: ignore[override]
        """Whether the inner embedder takes token ids."""
        return self.inner.takes_token_ids

    @property
    def device(self) -> str:
        """The inner embedder's device."""
        return self.inner.device

    @property
    def token_spec(self) -> TokenSpec | None:
        """The inner embedder's tokenizer."""
        return self.inner.token_spec

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """The inner embedder's passage vectors."""
        return self.inner.embed_documents(texts)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """The inner embedder's query vectors."""
        return self.inner.embed_queries(texts)

    def embed_token_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """The inner embedder's vectors of token ids."""
        return self.inner.embed_token_ids(batch)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Delegated (tokenising needs no model)."""
        return self.inner.count_tokens(texts)

    def describe(self) -> dict[str, Any]:
        """The inner embedder's manifest entry."""
        return self.inner.describe()

    def submit_queries(self, texts: Sequence[str]) -> Future[np.ndarray]:
        """The inner embedder's future of query vectors."""
        return self.inner.submit_queries(texts)

    def close(self) -> None:
        """Closes the inner embedder."""
        self.inner.close()
