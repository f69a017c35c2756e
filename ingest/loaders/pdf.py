"""PDF via pypdf (the ``[pdf]`` extra): text per page, joined with paragraph breaks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ingest.document import Document, LoadError

__all__ = ["load_pdf"]


def load_pdf(path: Path, doc_id: str) -> Iterator[Document]:
    """A ``.pdf`` file: one document (scanned PDFs without a text layer are reported, not OCR'd)."""
    try:
        from pypdf import PdfReader
    except ImportError as exc:
        raise LoadError(f"{path}: PDF support needs: pip install 'zhrag[pdf]'") from exc
    reader = PdfReader(str(path), strict=False)
    pages = [page.extract_text() or "" for page in reader.pages]
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise LoadError(f"{path}: no extractable text (scanned PDF? run OCR first)")
    meta_title = (reader.metadata.title if reader.metadata else None) or ""
    title = meta_title.strip() or next((ln.strip() for ln in text.splitlines() if ln.strip()), "")[:100]
    yield Document(id=doc_id, text=text, title=title, source=str(path), format="pdf", metadata={"pages": len(pages)})
