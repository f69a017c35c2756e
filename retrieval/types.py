"""Plain data passed between ingestion, the index and the searcher."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Chunk", "Hit", "CONTINUED"]

CONTINUED = "（续）"
"""Marker after the article number of a continued part of a split statute article (第X条（续）)."""


@dataclass
class Chunk:
    """One indexed passage.

    Attributes:
        id: Stable chunk id (hash of document id, position and text).
        doc_id: Id of the source document.
        text: The passage as returned to callers.
        embed_text: What is embedded and BM25-indexed (text with its law/heading context).
        title: Document title.
        source: Source file path or URI.
        metadata: Free-form fields (``law``, ``article``, ``headings``, ...).
        seq: Position of the chunk in its document.
        rid: Integer row id shared by the docstore, the vector store and BM25 (assigned by the index).
    """

    id: str
    doc_id: str
    text: str
    embed_text: str
    title: str = ""
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    rid: int = -1


@dataclass
class Hit:
    """A search result: the chunk, its final score and what each retrieval leg said about it."""

    chunk: Chunk
    score: float
    ranks: dict[str, int] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    match: str = "retrieval"
    """``citation`` when the query cited this statute article (it is put first), else ``retrieval``."""
