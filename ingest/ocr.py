"""OCR for scanned pages and images: RapidOCR (PP-OCR models shipped inside its wheel), offline on a CPU.

The optional ``[ocr]`` extra. One engine per process, loaded on first use (a worker process loads its own).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ingest.document import LoadError
from ingest.layout import Span

__all__ = ["OcrResult", "OcrUnavailable", "ocr_available", "ocr_image", "OCR_HINT", "set_page_progress"]

OCR_HINT = 'pip install -e ".[ocr]"  (or: pip install rapidocr-onnxruntime)'
_ENGINES: dict[str, Any] = {}
_LOCK = threading.Lock()
BAND_DET_SIDE = 320
"""The detector scales an image's short side up to 736 pixels: right for a page, four times too much work
for a band of one or two lines (and no better at finding them)."""
_PAGE_PROGRESS: Callable[[int, int], None] | None = None


class OcrUnavailable(LoadError):
    """A file needs OCR and the ``[ocr]`` extra is not installed."""


@dataclass(frozen=True)
class OcrResult:
    """The text boxes of one image (in the caller's coordinates) and their mean confidence (by characters)."""

    spans: list[Span]
    confidence: float | None


def ocr_available() -> bool:
    """Whether the OCR engine can be imported."""
    try:
        import rapidocr_onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _engine(kind: str = "page") -> Any:
    with _LOCK:
        if kind not in _ENGINES:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as exc:
                raise OcrUnavailable(f"needs OCR, which is not installed: {OCR_HINT}") from exc
            _ENGINES[kind] = RapidOCR() if kind == "page" else RapidOCR(det_limit_side_len=BAND_DET_SIDE)
        return _ENGINES[kind]


def set_page_progress(callback: Callable[[int, int], None] | None) -> None:
    """Report OCR pages to ``callback(done, total)`` deltas (the ingest progress bar); ``None`` stops."""
    global _PAGE_PROGRESS
    _PAGE_PROGRESS = callback


def page_progress(done: int = 0, total: int = 0) -> None:
    """Tell the progress callback, if any, that ``total`` pages were queued and ``done`` finished."""
    if _PAGE_PROGRESS is not None:
        _PAGE_PROGRESS(done, total)


def _em(text: str, width: float, height: float) -> float:
    """A box's type size from its width per character (a CJK character is one em wide, Latin about half):
    steadier than the box's height, which varies with the glyphs and the detector's padding."""
    units = sum(1.0 if ord(ch) >= 0x2E80 else 0.55 for ch in text if not ch.isspace())
    return max(width / units if units >= 2 else height, 1.0)


GAP_PITCHES = 1.6
"""A vertical gap between two read lines this many line pitches tall is read again on its own."""
MAX_GAPS = 8
"""At most this many gaps are read again per image."""
BAND_MARGIN = 40
"""White pixels around a band read again."""


def _boxes(
    engine: Any, array: Any, dx: float = 0.0, dy: float = 0.0
) -> list[tuple[list[float], list[float], str, float]]:
    result, _ = engine(array)
    out = []
    for box, text, score in result or []:
        text = str(text).strip()
        if text:
            out.append(([p[0] + dx for p in box], [p[1] + dy for p in box], text, float(score)))
    return out


def _fill_gaps(engine: Any, array: Any, boxes: list) -> list:
    """Read again the bands between lines that are taller than a missing line: the detector drops a whole
    line now and then (seen on statute scans: a full line between two read ones), and a band alone is
    found. Only boxes of about the page's line height are kept (no slivers of the neighbouring lines)."""
    import numpy as np

    rows = sorted((min(ys), max(ys)) for _, ys, _, _ in boxes)
    if len(rows) < 4:
        return []
    pitch = float(np.median([b[0] - a[0] for a, b in zip(rows, rows[1:], strict=False)]))
    height = float(np.median([b - a for a, b in rows]))
    gaps = [(a[1], b[0]) for a, b in zip(rows, rows[1:], strict=False) if b[0] - a[0] > GAP_PITCHES * pitch]
    found = []
    for top, bottom in sorted(gaps, key=lambda g: g[0] - g[1])[:MAX_GAPS]:
        lo, hi = max(0, int(top) - 2), min(array.shape[0], int(bottom) + 2)
        if hi - lo < 0.8 * height:
            continue
        # A white margin around the band: the detector missed lines flush with a crop's edge.
        band = np.pad(
            array[lo:hi], ((BAND_MARGIN, BAND_MARGIN), (BAND_MARGIN, BAND_MARGIN), (0, 0)), constant_values=255
        )
        for xs, ys, text, score in _boxes(engine, band, dx=-BAND_MARGIN, dy=lo - BAND_MARGIN):
            if max(ys) - min(ys) >= 0.6 * height and len(text) >= 2:
                found.append((xs, ys, text, score))
    return found


def ocr_image(image: Any, scale: float = 1.0) -> OcrResult:
    """OCR a PIL image; box coordinates are divided by ``scale`` (pixels per point for a rendered page).

    Raises:
        OcrUnavailable: the ``[ocr]`` extra is missing.
    """
    import numpy as np

    engine = _engine()
    array = np.asarray(image.convert("RGB"))
    boxes = _boxes(engine, array)
    boxes += _fill_gaps(_engine("band"), array, boxes)
    spans: list[Span] = []
    weighted = chars = 0.0
    for xs_px, ys_px, text, score in boxes:
        xs = [x / scale for x in xs_px]
        ys = [y / scale for y in ys_px]
        top, bottom = min(ys), max(ys)
        spans.append(Span(text, min(xs), max(xs), top, bottom, em=_em(text, max(xs) - min(xs), bottom - top)))
        weighted += score * len(text)
        chars += len(text)
    return OcrResult(spans, round(weighted / chars, 4) if chars else None)
