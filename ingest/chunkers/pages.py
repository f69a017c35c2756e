"""Page provenance: which pages of a paged source (PDF, scan) each chunk came from."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from ingest.chunkers.tables import TABLE_SEPARATOR
from ingest.layout import PageSpan
from retrieval.types import CONTINUED, Chunk

__all__ = ["assign_pages"]

ANCHOR = 24
"""Non-whitespace characters matched at each end of a chunk to find it in its document."""


def _compact(text: str) -> str:
    return "".join(text.split())


def _own_text(chunk: Chunk) -> str:
    """The part of a chunk's text that is a run of the document: without a continued article's label and
    without a split table's repeated caption and header."""
    text = chunk.text
    if CONTINUED in text[:40]:
        text = text.split(CONTINUED, 1)[1]
    lines = text.split("\n")
    seps = [i for i, ln in enumerate(lines) if TABLE_SEPARATOR.match(ln)]
    if seps and seps[0] <= 2 and seps[0] + 1 < len(lines):  # starts with a table: anchor on its rows
        text = "\n".join(lines[seps[0] + 1 :])
    return text


def assign_pages(chunks: Sequence[Chunk], text: str, pages: Sequence[PageSpan]) -> None:
    """Set ``page`` (first), ``pages`` ([first, last]) and, for OCR'd pages, ``ocr`` and ``ocr_confidence``
    in each chunk's metadata. A chunk whose text cannot be found in ``text`` gets no page (never a guess).

    ``text`` is the document's text as chunked; page starts count its non-whitespace characters.
    """
    if not pages:
        return
    doc = _compact(text)
    starts = [p.start for p in pages]
    cursor = 0
    for chunk in chunks:
        own = _compact(_own_text(chunk))
        if not own:
            continue
        head, tail = own[:ANCHOR], own[-ANCHOR:]
        begin = doc.find(head, cursor)
        if begin < 0:
            begin = doc.find(head)
        if begin < 0:
            continue
        end = doc.find(tail, begin + max(0, len(own) - len(tail) - ANCHOR))
        end = end + len(tail) if end >= 0 else begin + len(own)
        cursor = begin
        first = pages[max(0, bisect.bisect_right(starts, begin) - 1)]
        last = pages[max(0, bisect.bisect_right(starts, max(begin, end - 1)) - 1)]
        covered = [p for p in pages if first.page <= p.page <= last.page]
        chunk.metadata["page"] = first.page
        chunk.metadata["pages"] = [first.page, last.page]
        scores = [p.confidence for p in covered if p.ocr and p.confidence is not None]
        if any(p.ocr for p in covered):
            chunk.metadata["ocr"] = True
            if scores:
                chunk.metadata["ocr_confidence"] = round(sum(scores) / len(scores), 4)
