"""Plain text and Markdown, with encoding detection (UTF-8, GB18030/GBK, Big5, UTF-16)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ingest.document import Document, LoadError

__all__ = ["read_text", "decode_bytes", "load_text", "load_markdown", "markdown_title"]

_HEADING = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.MULTILINE)
# Chinese files are often GB18030 (a superset of GBK and GB2312); try it before asking a detector.
_FALLBACK_ENCODINGS = ("utf-8", "gb18030")


def decode_bytes(data: bytes, name: str = "<bytes>") -> str:
    """Decode bytes: BOMs first, then strict UTF-8, strict GB18030, then charset detection.

    Raises:
        LoadError: when no encoding fits.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    for encoding in _FALLBACK_ENCODINGS:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is None:
        raise LoadError(f"{name}: cannot detect the text encoding")
    return str(best)


def read_text(path: Path) -> str:
    """Read a text file in whatever encoding it uses."""
    return decode_bytes(path.read_bytes(), str(path))


def markdown_title(text: str) -> str:
    """The first ``#`` heading, or ``""``."""
    match = _HEADING.search(text)
    return match.group(1).strip() if match else ""


def load_text(path: Path, doc_id: str) -> Iterator[Document]:
    """A ``.txt`` file: one document; the first non-empty line is its title."""
    text = read_text(path)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    yield Document(id=doc_id, text=text, title=first[:100], source=str(path), format="txt")


def load_markdown(path: Path, doc_id: str) -> Iterator[Document]:
    """A Markdown file: one document titled by its first ``#`` heading."""
    text = read_text(path)
    yield Document(id=doc_id, text=text, title=markdown_title(text) or path.stem, source=str(path), format="md")
