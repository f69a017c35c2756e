"""OCR for scanned pages and images: RapidOCR (PP-OCR models shipped inside its wheel), offline on a CPU.

The optional ``[ocr]`` extra. One engine per process, loaded on first use (a worker process loads its own).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ingest.document import LoadError
from ingest.layout import Span
from retrieval.process import OCR_PAGES, SINGLETONS

__all__ = ["OcrResult", "OcrUnavailable", "ocr_available", "ocr_image", "OCR_HINT", "set_page_progress"]

OCR_HINT = 'pip install -e ".[ocr]"  (or: pip install rapidocr-onnxruntime)'


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


def _new_engine() -> Any:
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as exc:
        raise OcrUnavailable(f"needs OCR, which is not installed: {OCR_HINT}") from exc
    return RapidOCR()


def _engine() -> Any:
    return SINGLETONS.get("rapidocr", _new_engine)


def set_page_progress(callback: Callable[[int, int], None] | None) -> None:
    """Report OCR pages to ``callback(done, total)`` deltas (the ingest progress bar); ``None`` stops."""
    OCR_PAGES.callback = callback


def page_progress(done: int = 0, total: int = 0) -> None:
    """Tell the progress callback, if any, that ``total`` pages were queued and ``done`` finished."""
    OCR_PAGES(done, total)


def _em(text: str, width: float, height: float) -> float:
    """A box's type size from its width per character (a CJK character is one em wide, Latin about half):
    steadier than the box's height, which varies with the glyphs and the detector's padding."""
    units = sum(1.0 if ord(ch) >= 0x2E80 else 0.55 for ch in text if not ch.isspace())
    return max(width / units if units >= 2 else height, 1.0)


GAP_PITCHES = 1.6
"""A vertical gap between two read lines this many line pitches tall is read again on its own."""
MAX_GAPS = 40
"""At most this many gaps are searched per image."""
MIN_GAP_SCORE = 0.8
"""Recogniser confidence a line found in a gap needs."""


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


def _ink_runs(gray: Any, min_height: float) -> list[tuple[int, int, int, int]]:
    """Text lines in a band by its ink profile: (top, bottom, left, right) of each run of inked pixel rows at
    least ``min_height`` tall (a rule under a running header is one or two rows)."""
    ink = gray < 128
    rows = ink.sum(axis=1) > max(2, 0.002 * gray.shape[1])
    runs, start = [], None
    for y, inked in enumerate([*rows.tolist(), False]):
        if inked and start is None:
            start = y
        elif not inked and start is not None:
            if y - start >= min_height:
                cols = ink[start:y].any(axis=0).nonzero()[0]
                runs.append((start, y, int(cols[0]), int(cols[-1]) + 1))
            start = None
    return runs


def _fill_gaps(engine: Any, array: Any, boxes: list) -> list:
    """Read the lines the detector dropped: the detector misses a whole line now and then (seen on statute
    scans: a full line between two read ones). Every vertical gap taller than ``GAP_PITCHES`` line pitches is
    searched for rows of ink a line high, and each is read by the recogniser alone (no detection: fast, and
    it finds what the detector missed). Only confident readings of two or more characters are kept."""
    import numpy as np

    rows = sorted((min(ys), max(ys)) for _, ys, _, _ in boxes)
    if len(rows) < 4:
        return []
    pitch = float(np.median([b[0] - a[0] for a, b in zip(rows, rows[1:], strict=False)]))
    height = float(np.median([b - a for a, b in rows]))
    gray = array.min(axis=2)
    found: list = []
    gaps = [(a[1], b[0]) for a, b in zip(rows, rows[1:], strict=False) if b[0] - a[0] > GAP_PITCHES * pitch]
    for top, bottom in gaps[:MAX_GAPS]:
        lo, hi = int(top) + 1, int(bottom) - 1
        for y0, y1, x0, x1 in _ink_runs(gray[lo:hi], 0.5 * height):
            y0, y1 = max(0, lo + y0 - 4), min(array.shape[0], lo + y1 + 4)
            x0, x1 = max(0, x0 - 8), min(array.shape[1], x1 + 8)
            result, _ = engine(array[y0:y1, x0:x1], use_det=False, use_cls=False)
            for text, score in [(str(r[0]).strip(), float(r[1])) for r in result or []]:
                if len(text) >= 2 and score >= MIN_GAP_SCORE:
                    found.append(([x0, x1, x1, x0], [y0, y0, y1, y1], text, score))
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
    boxes += _fill_gaps(engine, array, boxes)
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
