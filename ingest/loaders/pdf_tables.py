"""Ruled tables in a PDF's text layer, found by pdfplumber's table finder (ruling lines), as Markdown."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ingest.layout import markdown_table

__all__ = ["ruled_tables"]

Box = tuple[float, float, float, float]
"""x0, top, x1, bottom in points, top-down."""


def ruled_tables(path: Path, numbers: Sequence[int]) -> dict[int, list[tuple[Box, str]]]:
    """Per page number (1-based), the ruled tables with at least two rows and two columns: (box, Markdown).

    Only the listed pages are searched; without pdfplumber installed nothing is found (text stays lines).
    """
    if not numbers:
        return {}
    try:
        import pdfplumber
    except ImportError:
        return {}
    found: dict[int, list[tuple[Box, str]]] = {}
    with pdfplumber.open(str(path)) as pdf:
        for number in numbers:
            page = pdf.pages[number - 1]
            for table in page.find_tables({"vertical_strategy": "lines", "horizontal_strategy": "lines"}):
                rows = [
                    [cell or "" for cell in row] for row in table.extract() if any((cell or "").strip() for cell in row)
                ]
                if len(rows) >= 2 and max(len(r) for r in rows) >= 2:
                    found.setdefault(number, []).append((tuple(table.bbox), markdown_table(rows)))
            page.close()
    return found
