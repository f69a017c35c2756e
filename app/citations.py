"""Check the statute citations in a text (an LLM's answer) against an index: the use case behind
``POST /citations/verify`` and ``zhrag citations``. It reads chunks only — no model, vectors or BM25."""

from __future__ import annotations

from typing import Any

from retrieval.citations import CitationIndex
from retrieval.docstore import DocStore
from retrieval.types import CONTINUED

__all__ = ["check_citations"]


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
