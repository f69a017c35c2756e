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
_ENGINE: Any = None
_LOCK = threading.Lock()
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


def _engine() -> Any:
    global _ENGINE
    with _LOCK:
        if _ENGINE is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as exc:
                raise OcrUnavailable(f"needs OCR, which is not installed: {OCR_HINT}") from exc
            _ENGINE = RapidOCR()
        return _ENGINE


def set_page_progress(callback: Callable[[int, int], None] | None) -> None:
    """Report OCR pages to ``callback(done, total)`` deltas (the ingest progress bar); ``None`` stops."""
    global _PAGE_PROGRESS
    _PAGE_PROGRESS = callback


def page_progress(done: int = 0, total: int = 0) -> None:
    """Tell the progress callback, if any, that ``total`` pages were queued and ``done`` finished."""
    if _PAGE_PROGRESS is not None:
        _PAGE_PROGRESS(done, total)


def ocr_image(image: Any, scale: float = 1.0) -> OcrResult:
    """OCR a PIL image; box coordinates are divided by ``scale`` (pixels per point for a rendered page).

    Raises:
        OcrUnavailable: the ``[ocr]`` extra is missing.
    """
    import numpy as np

    engine = _engine()
    result, _ = engine(np.asarray(image.convert("RGB")))
    spans: list[Span] = []
    weighted = chars = 0.0
    for box, text, score in result or []:
        text = str(text).strip()
        if not text:
            continue
        xs = [p[0] / scale for p in box]
        ys = [p[1] / scale for p in box]
        top, bottom = min(ys), max(ys)
        spans.append(Span(text, min(xs), max(xs), top, bottom, em=max(bottom - top, 1.0)))
        weighted += float(score) * len(text)
        chars += len(text)
    return OcrResult(spans, round(weighted / chars, 4) if chars else None)
