"""Plain text and Markdown, with encoding detection (UTF-8, GB18030/GBK, Big5, UTF-16)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ingest.document import Document, LoadError, LoadWarning

__all__ = ["read_text", "decode_bytes", "load_text", "load_markdown", "markdown_title", "replaced_warning"]

_HEADING = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.MULTILINE)
REPLACEMENT = "\ufffd"
# Mostly-UTF-8 means at most this many broken sequences, or this share of the bytes, and far more good
# multi-byte characters than broken ones (else the bytes are GBK/GB18030 or Big5 and decode as those).
MAX_REPLACED = 16
MAX_REPLACED_SHARE = 1e-4
MIN_GOOD_PER_BROKEN = 20
LEGACY_CHINESE = ["gb18030", "big5"]


def _mostly_utf8(repaired: str, replaced: int, size: int) -> bool:
    """One broken byte in a long UTF-8 file is damage; a dozen in a short file is another encoding."""
    if replaced > max(MAX_REPLACED, size * MAX_REPLACED_SHARE):
        return False
    good = sum(1 for ch in repaired if ord(ch) >= 0x80 and ch != REPLACEMENT)
    return replaced <= 1 and good >= 1 or good >= MIN_GOOD_PER_BROKEN * replaced


def decode_bytes(data: bytes, name: str = "<bytes>") -> tuple[str, int]:
    """Decode bytes: BOMs first, then UTF-8, then GB18030 or Big5 (whichever reads as Chinese), then detection.

    UTF-8 with a few broken bytes among many good characters (a truncated copy, one bad sector) stays
    UTF-8: those bytes become U+FFFD and are counted, instead of the whole file decoding as mojibake. A
    short GBK or Big5 file is not UTF-8 with damage: it is tried in those encodings first.

    Returns:
        The text and how many undecodable byte sequences were replaced.

    Raises:
        LoadError: when no encoding fits.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16"), 0
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    repaired = data.decode("utf-8", errors="replace")
    replaced = repaired.count(REPLACEMENT) - data.count(REPLACEMENT.encode())
    if _mostly_utf8(repaired, replaced, len(data)):
        return repaired, replaced
    from charset_normalizer import from_bytes

    # GB18030 decodes almost any byte pairs, Big5 text included (as mojibake): let the detector choose
    # between the two by which reads as language.
    best = from_bytes(data, cp_isolation=LEGACY_CHINESE).best() or from_bytes(data).best()
    if best is not None:
        return str(best), 0
    try:
        return data.decode("gb18030"), 0
    except UnicodeDecodeError as exc:
        raise LoadError(f"{name}: cannot detect the text encoding") from exc


def read_text(path: Path) -> tuple[str, int]:
    """Read a text file in whatever encoding it uses: (text, undecodable sequences replaced)."""
    return decode_bytes(path.read_bytes(), str(path))


def replaced_warning(path: Path, replaced: int) -> LoadWarning:
    """The report for a file whose undecodable bytes were replaced."""
    return LoadWarning(str(path), f"{path}: {replaced} undecodable byte sequence(s) replaced by U+FFFD")


def markdown_title(text: str) -> str:
    """The first ``#`` heading, or ``""``."""
    match = _HEADING.search(text)
    return match.group(1).strip() if match else ""


def load_text(path: Path, doc_id: str) -> Iterator[Document | LoadWarning]:
    """A ``.txt`` file: one document; the first non-empty line is its title."""
    text, replaced = read_text(path)
    if replaced:
        yield replaced_warning(path, replaced)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    yield Document(id=doc_id, text=text, title=first[:100], source=str(path), format="txt")


def load_markdown(path: Path, doc_id: str) -> Iterator[Document | LoadWarning]:
    """A Markdown file: one document titled by its first ``#`` heading."""
    text, replaced = read_text(path)
    if replaced:
        yield replaced_warning(path, replaced)
    yield Document(id=doc_id, text=text, title=markdown_title(text) or path.stem, source=str(path), format="md")
