"""Word ``.docx`` via python-docx (the ``[docx]`` extra): Heading styles become Markdown headings, tables
Markdown tables, in document order."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ingest.document import Document, LoadError
from ingest.layout import markdown_table

__all__ = ["load_docx"]

_HEADING_STYLE = re.compile(r"^(?:Heading|标题)\s*(\d)$", re.IGNORECASE)


def load_docx(path: Path, doc_id: str) -> Iterator[Document]:
    """A ``.docx`` file: one document; the Title style (or first heading) is its title."""
    try:
        import docx
        from docx.enum.style import WD_STYLE_TYPE
        from docx.table import Table
    except ImportError as exc:
        raise LoadError(f'{path}: .docx support is not installed: pip install -e ".[docx]"') from exc
    document = docx.Document(str(path))
    # python-docx resolves ``paragraph.style`` by searching the styles part for every paragraph, which
    # makes a file of many short paragraphs quadratic; read each paragraph's style id and map it once.
    names = {style.style_id: style.name for style in document.styles}
    default = document.styles.default(WD_STYLE_TYPE.PARAGRAPH)
    default_name = default.name if default is not None else ""
    lines: list[str] = []
    title = (document.core_properties.title or "").strip()
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            rows = _table_rows(block)
            if rows:
                lines.append(markdown_table(rows))
            continue
        para = block
        text = para.text.strip()
        if not text:
            continue
        style_id = para._p.style  # noqa: SLF001 - the raw w:pStyle value, no lookup
        style = names.get(style_id, default_name) if style_id else default_name
        level = _HEADING_STYLE.match(style or "")
        if style == "Title":
            title = title or text
            lines.append(f"# {text}")
        elif level:
            title = title or text
            lines.append(f"{'#' * int(level.group(1))} {text}")
        else:
            lines.append(text)
    yield Document(id=doc_id, text="\n\n".join(lines), title=title, source=str(path), format="docx")


def _table_rows(table) -> list[list[str]]:
    """A table's cell texts row by row; a merged cell repeated across the columns it spans is kept once."""
    rows: list[list[str]] = []
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            if cell._tc is previous:  # noqa: SLF001 - python-docx returns a merged cell once per grid column
                cells.append("")
                continue
            previous = cell._tc  # noqa: SLF001
            cells.append("\n".join(p.text for p in cell.paragraphs).strip())
        if any(cells):
            rows.append(cells)
    return rows
