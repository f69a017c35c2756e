"""Embedders: local sentence-transformers (Qwen3-Embedding) and remote OpenAI-compatible servers."""

from __future__ import annotations

from typing import Any, Literal, get_args

from retrieval.embedders.base import EmbedderError, normalize_rows, truncate_dim
from retrieval.protocols import Embedder

__all__ = [
    "EmbedderError",
    "normalize_rows",
    "truncate_dim",
    "create_embedder",
    "EMBEDDER_BACKENDS",
    "EmbedderBackend",
]

EmbedderBackend = Literal["sentence-transformers", "openai"]
EMBEDDER_BACKENDS: tuple[EmbedderBackend, ...] = get_args(EmbedderBackend)


def create_embedder(backend: str, **options: Any) -> Embedder:
    """Build an embedder by backend name.

    Args:
        backend: ``sentence-transformers`` (alias ``local``) or ``openai`` (alias ``remote``).
        **options: Constructor arguments of the backend class.

    Raises:
        EmbedderError: for an unknown backend.
    """
    if backend in ("sentence-transformers", "local", "st"):
        from retrieval.embedders.sentence_transformers import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder(**options)
    if backend in ("openai", "remote"):
        from retrieval.embedders.openai import OpenAIEmbedder

        return OpenAIEmbedder(**options)
    raise EmbedderError(f"unknown embedder backend {backend!r}; choose one of {EMBEDDER_BACKENDS}")
