"""HTML: visible text with headings kept as Markdown headings (so the section chunker sees them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ingest.document import Document
from ingest.loaders.text import read_text

__all__ = ["load_html", "html_to_text"]

_DROP = ("script", "style", "noscript", "template", "nav", "footer")
_HEADINGS = {f"h{i}": "#" * i for i in range(1, 7)}
_BLOCKS = ("p", "div", "li", "tr", "br", "section", "article", "blockquote", "pre", "table")


def html_to_text(html: str) -> tuple[str, str]:
    """(title, text) of an HTML page; headings become ``#`` lines, blocks become paragraphs."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(list(_DROP)):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else ""
    if soup.title:
        soup.title.decompose()
    for tag in soup.find_all(list(_HEADINGS)):
        tag.replace_with(f"\n\n{_HEADINGS[tag.name]} {tag.get_text(' ', strip=True)}\n\n")
    for tag in soup.find_all(list(_BLOCKS)):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    text = soup.get_text()
    if not title:
        first = next((ln.strip("# ").strip() for ln in text.splitlines() if ln.strip()), "")
        title = first[:100]
    return title, text


def load_html(path: Path, doc_id: str) -> Iterator[Document]:
    """An ``.html``/``.htm`` file: one document."""
    title, text = html_to_text(read_text(path))
    yield Document(id=doc_id, text=text, title=title, source=str(path), format="html")
