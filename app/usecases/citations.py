"""Checking the statute citations in a text (an LLM's answer) against an index: the use case behind
``POST /citations/verify`` and ``zhrag citations``. It reads chunks only — no model, vectors or BM25."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.usecases.errors import InvalidRequest, Unavailable
from app.usecases.limits import MAX_TEXT_CHARS
from retrieval.citations import CitationIndex
from retrieval.docstore import DocStore
from retrieval.types import CONTINUED

if TYPE_CHECKING:
    from app.services import Services
    from app.settings import Settings

__all__ = ["check_citations", "verify_citations", "verify_citations_in_index", "CitationsOff"]


class CitationsOff(Unavailable):
    """Citation checking is turned off (``ZHRAG_CITATIONS``)."""

    def __init__(self) -> None:
        super().__init__("citation checking is off (ZHRAG_CITATIONS)")


def _article_text(docs: DocStore, rids: list[int]) -> tuple[str | None, str | None]:
    """The cited article's whole text (its parts joined) and its first chunk's id."""
    chunks = docs.get(rids) if rids else {}
    parts = [chunks[r] for r in rids if r in chunks]
    if not parts:
        return None, None
    marker = f"{parts[0].metadata.get('article', '')}{CONTINUED}"
    text = "\n".join([parts[0].text, *(p.text.removeprefix(marker) for p in parts[1:])])
    return text, parts[0].id


def check_citations(citations: CitationIndex, docs: DocStore, version: str, text: str) -> list[dict[str, Any]]:
    """Every citation in ``text``, in order: the verdict's fields, the article's ``text`` and ``chunk_id``
    when found, and the ``index_version`` checked against."""
    checked = []
    for verdict in citations.check(text):
        article, chunk_id = _article_text(docs, verdict.rids)
        checked.append({**verdict.to_dict(), "text": article, "chunk_id": chunk_id, "index_version": version})
    return checked


def _checked_text(text: str) -> str:
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidRequest(f"the text to check is longer than {MAX_TEXT_CHARS} characters")
    return text


def verify_citations(services: Services, text: str) -> list[dict[str, Any]]:
    """Every citation in ``text`` checked against the index ``services`` serves (see :func:`check_citations`).

    Raises:
        InvalidRequest: the text is longer than :data:`MAX_TEXT_CHARS` (a service's bound on its work).
        CitationsOff: citation checking is turned off.
    """
    if services.searcher.citations is None:
        raise CitationsOff()
    index = services.index
    return check_citations(services.searcher.citations, index.docs, index.version, _checked_text(text))


def verify_citations_in_index(settings: Settings, text: str) -> list[dict[str, Any]]:
    """Every citation in ``text`` checked against the index ``settings`` name, opened for this call: its
    chunks only, no model, vectors or BM25 (well under a second). Any length of text.

    Raises:
        CitationsOff: citation checking is turned off.
    """
    from retrieval.index import LiveDocs

    if not settings.search.citations:
        raise CitationsOff()
    live = LiveDocs(settings.index)
    try:
        citations = CitationIndex.from_docstore(live.docs, settings.search.citation_aliases)
        return check_citations(citations, live.docs, live.version, text)
    finally:
        live.close()
