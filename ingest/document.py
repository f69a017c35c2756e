"""The document a loader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ingest.layout import Assembled, PageSpan

__all__ = ["Document", "LoadError", "BadRecord", "LoadWarning"]


class LoadError(Exception):
    """A file could not be read; the message names the file and the reason."""


@dataclass
class Document:
    """A loaded document before chunking.

    Attributes:
        id: Document id (relative path for files, the ``id`` field for JSONL records).
        text: Full text.
        title: Title (first heading, HTML title, JSONL ``title``).
        source: Where it came from (file path, with ``#line`` for JSONL records).
        format: Loader format (``md``, ``txt``, ``html``, ``pdf``, ``docx``, ``jsonl``).
        metadata: Extra fields (JSONL fields other than id/text/title).
        pages: For paged sources (PDF, scans): where each page starts in ``text`` (non-whitespace
            characters), and whether it was OCR'd; chunks get ``page``/``pages`` from it.
    """

    id: str
    text: str
    title: str = ""
    source: str = ""
    format: str = "txt"
    metadata: dict[str, Any] = field(default_factory=dict)
    pages: list[PageSpan] | None = None

    @classmethod
    def paged(
        cls, doc_id: str, assembled: Assembled, path: str, fmt: str, page_count: int, title: str = ""
    ) -> Document:
        """A document read page by page (PDF, image): its text, where its pages start, ``page_count``."""
        return cls(
            id=doc_id,
            text=assembled.text,
            title=assembled.title(title),
            source=path,
            format=fmt,
            metadata={"page_count": page_count},
            pages=assembled.pages,
        )


@dataclass(frozen=True)
class BadRecord:
    """One unusable record of a multi-record file (a JSONL line); the rest of the file is still read.

    Attributes:
        path: The file.
        reason: What is wrong, naming the file and line (``corpus.jsonl:12: invalid JSON: ...``).
    """

    path: str
    reason: str


@dataclass(frozen=True)
class LoadWarning:
    """Something a loader repaired and kept (e.g. undecodable bytes replaced); reported, never fatal.

    Attributes:
        path: The file.
        reason: What was repaired, naming the file.
    """

    path: str
    reason: str
