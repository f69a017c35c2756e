"""Section-aware chunking for Markdown-like documents (md, html, docx): split under headings, then by size."""

from __future__ import annotations

import re

from ingest.chunkers.base import ChunkSettings, LengthFn, make_chunk
from ingest.chunkers.tables import body_parts
from ingest.document import Document
from retrieval.types import Chunk

__all__ = ["chunk_sections", "split_sections", "has_headings"]

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
MIN_SECTIONS = 2


def split_sections(text: str) -> list[tuple[list[str], str]]:
    """(heading path, body) pairs in document order; text before the first heading has an empty path."""
    sections: list[tuple[list[str], str]] = []
    path: list[tuple[int, str]] = []
    body: list[str] = []

    def flush() -> None:
        content = "\n".join(body).strip()
        if content:
            sections.append(([h for _, h in path], content))
        body.clear()

    for line in text.split("\n"):
        match = _HEADING.match(line.strip())
        if match:
            flush()
            level = len(match.group(1))
            path = [(lv, h) for lv, h in path if lv < level] + [(level, match.group(2))]
        else:
            body.append(line)
    flush()
    return sections


def has_headings(text: str) -> bool:
    """Whether the text has at least two Markdown headings."""
    return sum(1 for ln in text.split("\n") if _HEADING.match(ln.strip())) >= MIN_SECTIONS


def chunk_sections(doc: Document, settings: ChunkSettings, length: LengthFn) -> list[Chunk]:
    """Chunk each section separately (tables kept whole or split by rows); the heading path goes into metadata
    and the embedded context."""
    chunks: list[Chunk] = []
    for headings, body in split_sections(doc.text):
        # The document title is usually the top heading; do not repeat it in the context.
        path = [h for h in headings if h != doc.title]
        context = " ".join([doc.title, *path]).strip()
        for part in body_parts(body, context, settings, length):
            meta = {**doc.metadata, "headings": headings, "source": doc.source}
            chunks.append(make_chunk(doc.id, len(chunks), part, context, doc.title, doc.source, meta))
    return chunks
