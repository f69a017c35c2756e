"""Chunkers: statute-aware, section-aware and generic, chosen per document by :func:`chunk_document`."""

from __future__ import annotations

from ingest.chunkers.base import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    ChunkerName,
    ChunkSettings,
    LengthFn,
    chunk_id,
    cn_to_int,
)
from ingest.chunkers.generic import chunk_generic
from ingest.chunkers.pages import assign_pages
from ingest.chunkers.section import chunk_sections, has_headings
from ingest.chunkers.statute import chunk_statute, is_statute
from ingest.document import Document
from retrieval.types import Chunk

__all__ = [
    "ChunkSettings",
    "ChunkerName",
    "LengthFn",
    "chunk_document",
    "choose_chunker",
    "chunk_statute",
    "chunk_sections",
    "chunk_generic",
    "chunk_id",
    "cn_to_int",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CHUNK_OVERLAP",
]

_CHUNKERS = {"statute": chunk_statute, "section": chunk_sections, "generic": chunk_generic}


def choose_chunker(doc: Document) -> str:
    """``statute`` for 第X条 documents, ``section`` for documents with headings, else ``generic``."""
    if is_statute(doc.text):
        return "statute"
    if doc.format != "jsonl" and has_headings(doc.text):
        return "section"
    return "generic"


def chunk_document(doc: Document, settings: ChunkSettings, length: LengthFn) -> tuple[str, list[Chunk]]:
    """Chunk one (normalised) document with the configured or automatically chosen chunker; chunks of a paged
    document get their pages (:func:`assign_pages`).

    Returns:
        The chunker's name and the chunks.
    """
    name = choose_chunker(doc) if settings.chunker == "auto" else settings.chunker
    chunks = _CHUNKERS[name](doc, settings, length)
    if doc.pages:
        assign_pages(chunks, doc.text, doc.pages)
    return name, chunks
