"""HTML: visible text with headings kept as Markdown headings (so the section chunker sees them).

A streaming parser (the standard library's ``html.parser``) keeps the work linear in the input: no
tree is built, so deeply nested or huge pages cost what their size costs.
"""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

from ingest.document import Document, LoadWarning
from ingest.loaders.text import read_text, replaced_warning

__all__ = ["load_html", "html_to_text"]

_DROP = frozenset({"script", "style", "noscript", "template", "nav", "footer"})
_HEADINGS = {f"h{i}": "#" * i for i in range(1, 7)}
_BLOCKS = frozenset(
    {"p", "div", "li", "tr", "br", "section", "article", "blockquote", "pre", "table", "ul", "ol", "hr"}
)
_VOID = frozenset({"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "embed", "source", "wbr"})


class _TextParser(HTMLParser):
    """Collects visible text; headings become ``#`` lines, block elements paragraph breaks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._dropped = 0  # depth inside script/style/...
        self._in_title = False
        self._heading: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _DROP:
            self._dropped += 1
        elif tag == "title":
            self._in_title = True
        elif tag in _HEADINGS and self._heading is None:
            self.parts.append(f"\n\n{_HEADINGS[tag]} ")
            self._heading = []
        elif tag in _BLOCKS:
            self.parts.append("\n\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROP:
            self._dropped = max(0, self._dropped - 1)
        elif tag == "title":
            self._in_title = False
        elif tag in _HEADINGS and self._heading is not None:
            self.parts.append(" ".join(" ".join(self._heading).split()) + "\n\n")
            self._heading = None
        elif tag in _BLOCKS and tag not in _VOID:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._dropped:
            return
        if self._in_title:
            self.title.append(data)
        elif self._heading is not None:
            self._heading.append(data)
        else:
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    """(title, text) of an HTML page; headings become ``#`` lines, blocks become paragraphs."""
    parser = _TextParser()
    parser.feed(html)
    parser.close()
    if parser._heading is not None:  # an unclosed heading at the end
        parser.parts.append(" ".join(" ".join(parser._heading).split()))
    text = "".join(parser.parts)
    title = " ".join("".join(parser.title).split())
    if not title:
        first = next((ln.strip("# ").strip() for ln in text.splitlines() if ln.strip()), "")
        title = first[:100]
    return title, text


def load_html(path: Path, doc_id: str) -> Iterator[Document | LoadWarning]:
    """An ``.html``/``.htm`` file: one document."""
    html, replaced = read_text(path)
    if replaced:
        yield replaced_warning(path, replaced)
    title, text = html_to_text(html)
    yield Document(id=doc_id, text=text, title=title, source=str(path), format="html")
