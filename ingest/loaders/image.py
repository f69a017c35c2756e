"""Images (a photographed or scanned page): OCR (the ``[ocr]`` extra), then the same cleaning as a PDF page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ingest.document import Document, LoadError
from ingest.layout import Page, build_lines, layout
from ingest.ocr import OCR_HINT, OcrUnavailable, ocr_available, ocr_image, page_progress

__all__ = ["load_image", "IMAGE_SUFFIXES", "MAX_IMAGE_PIXELS"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MAX_IMAGE_PIXELS = 60_000_000
"""Larger images are refused (a decompression bomb, or a poster no page scan needs): ~A0 at 300 dpi."""
POINTS_PER_PIXEL = 72 / 150
"""Images carry no page size: pixels are read as if scanned at 150 dpi (only ratios matter to the layout)."""


def _frames(path: Path):
    from PIL import Image, ImageSequence

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        image = Image.open(path)
        image.load()
    except Image.DecompressionBombError as exc:
        raise LoadError(f"{path}: image too large ({exc}); limit {MAX_IMAGE_PIXELS:,} pixels") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise LoadError(f"{path}: not a readable image: {exc}") from exc
    return [frame.copy() for frame in ImageSequence.Iterator(image)]  # a multi-page TIFF has several


def load_image(path: Path, doc_id: str) -> Iterator[Document]:
    """An image file: one document, one page per frame (multi-page TIFF), read by OCR."""
    if not ocr_available():
        raise OcrUnavailable(f"{path}: an image needs OCR, which is not installed: {OCR_HINT}")
    frames = _frames(path)
    page_progress(total=len(frames))
    pages = []
    for number, frame in enumerate(frames, start=1):
        result = ocr_image(frame, 1 / POINTS_PER_PIXEL)
        width, height = (d * POINTS_PER_PIXEL for d in frame.size)
        lines = build_lines(result.spans)
        pages.append(Page(number, width, height, lines, ocr=True, confidence=result.confidence))
        page_progress(done=1)
    assembled = layout(pages)
    if not assembled.text.strip():
        raise LoadError(f"{path}: no text found in the image (OCR read nothing)")
    yield Document.paged(doc_id, assembled, str(path), "image", len(pages))
