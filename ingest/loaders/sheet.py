"""Spreadsheets: ``.xlsx`` (openpyxl, the ``[xlsx]`` extra) and ``.csv``, one document per sheet.

A sheet's text is a Markdown table (its first non-empty row is the header); the generic chunker groups its
rows into chunks that each repeat the header. The sheet's name is in the metadata (``sheet``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

from ingest.document import Document, LoadError, LoadWarning
from ingest.layout import markdown_table
from ingest.loaders.text import read_text, replaced_warning

__all__ = ["load_xlsx", "load_csv", "XLSX_HINT", "MAX_SHEET_CELLS"]

XLSX_HINT = 'pip install -e ".[xlsx]"'
MAX_SHEET_CELLS = 2_000_000
"""Cells read per sheet at most; a larger sheet is cut there and reported (the document limits still apply)."""


def _rows_to_text(rows: list[list[str]]) -> str:
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        return ""
    width = max(len(r) for r in rows)
    while width and not any(len(r) >= width and r[width - 1].strip() for r in rows):
        width -= 1  # trailing empty columns
    return markdown_table([r[:width] for r in rows])


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def load_xlsx(path: Path, doc_id: str) -> Iterator[Document | LoadWarning]:
    """A workbook: one document per non-empty sheet, id ``<file>#<sheet>``, titled ``<file stem> / <sheet>``."""
    try:
        import openpyxl
    except ImportError as exc:
        raise LoadError(f"{path}: .xlsx support is not installed: {XLSX_HINT}") from exc
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - openpyxl raises many types for a damaged file
        raise LoadError(f"{path}: not a readable .xlsx workbook: {type(exc).__name__}: {exc}") from exc
    try:
        for sheet in book.worksheets:
            rows: list[list[str]] = []
            cells = 0
            for row in sheet.iter_rows(values_only=True):
                cells += len(row)
                if cells > MAX_SHEET_CELLS:
                    yield LoadWarning(str(path), f"{path}: sheet {sheet.title!r} cut at {MAX_SHEET_CELLS:,} cells")
                    break
                rows.append([_cell(v) for v in row])
            text = _rows_to_text(rows)
            if text:
                yield Document(
                    id=f"{doc_id}#{sheet.title}",
                    text=text,
                    title=f"{path.stem} / {sheet.title}",
                    source=str(path),
                    format="xlsx",
                    metadata={"sheet": sheet.title},
                )
    finally:
        book.close()


def load_csv(path: Path, doc_id: str) -> Iterator[Document | LoadWarning]:
    """A CSV file (any encoding ``.txt`` takes; comma, tab or semicolon separated): one document."""
    text, replaced = read_text(path)
    if replaced:
        yield replaced_warning(path, replaced)
    try:
        dialect = csv.Sniffer().sniff(text[:8192], delimiters=",\t;")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = [[c for c in row] for row in csv.reader(io.StringIO(text), dialect)]
    except csv.Error as exc:
        raise LoadError(f"{path}: not a readable CSV file: {exc}") from exc
    table = _rows_to_text(rows)
    if table:
        yield Document(id=doc_id, text=table, title=path.stem, source=str(path), format="csv")
