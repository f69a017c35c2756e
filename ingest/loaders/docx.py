"""Word ``.docx`` via python-docx (the ``[docx]`` extra); Heading styles become Markdown headings."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ingest.document import Document, LoadError

__all__ = ["load_docx"]

_HEADING_STYLE = re.compile(r"^(?:Heading|标题)\s*(\d)$", re.IGNORECASE)


def load_docx(path: Path, doc_id: str) -> Iterator[Document]:
    """A ``.docx`` file: one document; the Title style (or first heading) is its title."""
    try:
        import docx
    except ImportError as exc:
        raise LoadError(f"{path}: .docx support needs: pip install 'zhrag[docx]'") from exc
    document = docx.Document(str(path))
    lines: list[str] = []
    title = (document.core_properties.title or "").strip()
    for para in document.paragraphs:
        text = para.text.strip()
        if not text:
            continue
        style = para.style.name if para.style is not None else ""
        level = _HEADING_STYLE.match(style)
        if style == "Title":
            title = title or text
            lines.append(f"# {text}")
        elif level:
            title = title or text
            lines.append(f"{'#' * int(level.group(1))} {text}")
        else:
            lines.append(text)
    for table in document.tables:
        for row in table.rows:
            lines.append(" | ".join(cell.text.strip() for cell in row.cells))
    yield Document(id=doc_id, text="\n\n".join(lines), title=title, source=str(path), format="docx")
