"""Generic chunking: token-sized pieces on Chinese sentence boundaries, titled by the document title."""

from __future__ import annotations

from ingest.chunkers.base import ChunkSettings, LengthFn, make_chunk
from ingest.chunkers.tables import body_parts
from ingest.document import Document
from retrieval.types import Chunk

__all__ = ["chunk_generic"]


def chunk_generic(doc: Document, settings: ChunkSettings, length: LengthFn) -> list[Chunk]:
    """Split the whole text (tables by rows, header repeated); short documents become one chunk. The title is
    the embedded context."""
    text = doc.text.strip()
    if not text:
        return []
    parts = body_parts(text, doc.title, settings, length)
    meta = {**doc.metadata, "source": doc.source}
    return [make_chunk(doc.id, i, part, doc.title, doc.title, doc.source, dict(meta)) for i, part in enumerate(parts)]
