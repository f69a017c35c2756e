"""PDF via pypdfium2 (the ``[pdf]`` extra): the text layer with positions, cleaned; scanned pages through OCR.

Per page: characters with their boxes -> lines -> running headers, footers and page numbers removed ->
columns in reading order -> paragraphs rebuilt across lines and pages (:mod:`ingest.layout`). A page
without a text layer but with images is rendered and OCR'd (the ``[ocr]`` extra); ruled tables become
Markdown tables (pdfplumber's table finder, only on pages that draw lines).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ingest.document import Document, LoadError, LoadWarning
from ingest.layout import Line, Page, Span, build_lines, layout
from ingest.ocr import OCR_HINT, OcrUnavailable, ocr_available, ocr_image, page_progress

__all__ = ["load_pdf", "pdf_pages", "PDF_HINT", "OCR_MIN_DPI", "OCR_MAX_SIDE"]

PDF_HINT = 'pip install -e ".[pdf]"'
OCR_MIN_DPI = 150
"""Scanned pages are rendered for OCR at their image's own resolution, at least this."""
OCR_MAX_SIDE = 2000
"""...and at most this many pixels on the long side: the OCR engine shrinks larger images itself, and that
second resampling lost whole lines in tests."""
MIN_TEXT_CHARS = 10
"""A page with fewer characters in its text layer than this, and an image, is treated as scanned."""


def _pdfium(path: Path) -> Any:
    try:
        import pypdfium2
    except ImportError as exc:
        raise LoadError(f"{path}: PDF support is not installed: {PDF_HINT}") from exc
    return pypdfium2


def _open(pdfium: Any, path: Path) -> Any:
    try:
        return pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        reason = str(exc)
        if "password" in reason.lower():
            raise LoadError(f"{path}: the PDF is encrypted and needs a password; decrypt it first") from exc
        raise LoadError(f"{path}: not a readable PDF (damaged or not a PDF): {reason}") from exc


def _text_spans(pdfium: Any, textpage: Any, height: float) -> list[Span]:
    """The text layer's characters (not those PDFium generates between lines) as spans, top-down.

    Each character is read by its index (``FPDFText_GetUnicode``): the page's text string does not line up
    with the indices when a glyph maps to several code points, and every character after it would shift.
    """
    raw = pdfium.raw
    spans: list[Span] = []
    for i in range(textpage.count_chars()):
        code = raw.FPDFText_GetUnicode(textpage, i)
        if code in (0, 10, 13) or raw.FPDFText_IsGenerated(textpage, i) == 1:
            continue
        ch = chr(code) if code < 0x110000 else "\ufffd"
        # Loose boxes (the glyph's advance and the font's ascent/descent): gaps between tight boxes of
        # narrow glyphs (1, ）) would read as spaces.
        left, bottom, right, top = textpage.get_charbox(i, loose=True)
        size = raw.FPDFText_GetFontSize(textpage, i)
        em = size if size > 0 else (top - bottom) / 1.2
        spans.append(Span(" " if ch.isspace() else ch, left, right, height - top, height - bottom, em=max(em, 1.0)))
    return spans


def _object_kinds(page: Any) -> list[int]:
    return [obj.type for obj in page.get_objects(max_depth=2)]


RULED_MIN_PATHS = 4
"""Pages that draw at least this many paths are searched for ruled tables (a header rule alone is one)."""


def _ocr_scale(page: Any, width: float, height: float) -> float:
    """Pixels per point to render a scanned page at: its largest image's own resolution, within bounds."""
    from pypdfium2.raw import FPDF_PAGEOBJ_IMAGE

    native = 0.0
    for obj in page.get_objects(filter=[FPDF_PAGEOBJ_IMAGE], max_depth=2):
        left, _, right, _ = obj.get_bounds()
        pixels = obj.get_px_size()[0]
        if right - left > 0.5 * width and pixels > 0:
            native = max(native, pixels / (right - left))
    return min(max(native, OCR_MIN_DPI / 72), OCR_MAX_SIDE / max(width, height))


def _ocr_page(page: Any, number: int, width: float, height: float) -> Page:
    scale = _ocr_scale(page, width, height)
    image = page.render(scale=scale, grayscale=True).to_pil()
    result = ocr_image(image, scale)
    return Page(number, width, height, build_lines(result.spans), ocr=True, confidence=result.confidence)


def pdf_pages(path: Path, ocr: bool | None = None) -> tuple[list[Page], list[str], str]:
    """Read a PDF into pages of lines; pages without a text layer are OCR'd when ``ocr`` (default: if installed).

    Returns:
        The pages, notes about pages that could not be read, and the PDF's title metadata.

    Raises:
        LoadError: encrypted, damaged, or only scanned pages and no OCR.
    """
    pdfium = _pdfium(path)
    pdf = _open(pdfium, path)
    ocr = ocr_available() if ocr is None else ocr
    pages: list[Page] = []
    scanned: list[int] = []
    ruled: list[int] = []
    try:
        title = (pdf.get_metadata_value("Title") or "").strip()
        todo: list[tuple[int, Any, float, float]] = []
        for index in range(len(pdf)):
            page = pdf[index]
            width, height = page.get_size()
            spans = _text_spans(pdfium, page.get_textpage(), height)
            kinds = _object_kinds(page)
            if sum(1 for s in spans if s.text.strip()) >= MIN_TEXT_CHARS or pdfium.raw.FPDF_PAGEOBJ_IMAGE not in kinds:
                pages.append(Page(index + 1, width, height, build_lines(spans)))
                if kinds.count(pdfium.raw.FPDF_PAGEOBJ_PATH) >= RULED_MIN_PATHS:
                    ruled.append(index + 1)
            else:
                scanned.append(index + 1)
                todo.append((index, page, width, height))
        notes: list[str] = []
        if todo and not ocr:
            if not any(p.lines for p in pages):
                raise OcrUnavailable(f"{path}: scanned PDF (no text layer); OCR is not installed: {OCR_HINT}")
            pages.extend(Page(i + 1, w, h) for i, _, w, h in todo)
            notes.append(_skipped_pages(scanned))
        else:
            page_progress(total=len(todo))
            for index, page, width, height in todo:
                pages.append(_ocr_page(page, index + 1, width, height))
                page_progress(done=1)
    finally:
        pdf.close()
    pages.sort(key=lambda p: p.number)
    _add_tables(path, pages, ruled)
    return pages, notes, title


def _skipped_pages(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:10])) + (" ..." if len(numbers) > 10 else "")
    return f"{len(numbers)} scanned page(s) without a text layer were not read (pages {shown}); OCR: {OCR_HINT}"


def _add_tables(path: Path, pages: list[Page], numbers: list[int]) -> None:
    """Replace the lines inside ruled tables by one Markdown table block each (pdfplumber, if installed)."""
    from ingest.loaders.pdf_tables import ruled_tables

    for number, tables in ruled_tables(path, numbers).items():
        page = pages[number - 1]
        for bbox, block in tables:
            x0, top, x1, bottom = bbox
            kept = [
                ln for ln in page.lines if not (x0 - 1 <= ln.x0 and ln.x1 <= x1 + 1 and top - 1 <= ln.top <= bottom)
            ]
            em = min((ln.em for ln in page.lines), default=10.0)
            page.lines = [*kept, Line(block, x0, x1, top, bottom, em, table=True)]


def load_pdf(path: Path, doc_id: str) -> Iterator[Document | LoadWarning]:
    """A ``.pdf`` file: one document whose text is the cleaned text layer (and OCR of scanned pages).

    Its ``pages`` record where each page starts, so chunks get ``page``/``pages`` metadata.
    """
    pages, notes, meta_title = pdf_pages(path)
    for note in notes:
        yield LoadWarning(str(path), f"{path}: {note}")
    assembled = layout(pages)
    if not assembled.text.strip():
        raise LoadError(f"{path}: no text found (blank pages, or images without readable text)")
    yield Document.paged(doc_id, assembled, str(path), "pdf", len(pages), meta_title)
