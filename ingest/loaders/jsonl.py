"""JSON Lines: one document per line with ``id``, ``text``, optional ``title``; other fields -> metadata.

A large file is read in byte ranges (:func:`jsonl_parts`) so that ingest's workers can share it; a bad
line is reported as a :class:`BadRecord` and the rest of the file is still ingested.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ingest.document import BadRecord, Document, LoadWarning
from ingest.loaders.text import decode_bytes, replaced_warning
from retrieval.text.normalize import LONE_SURROGATE

__all__ = ["load_jsonl", "jsonl_parts", "FilePart", "JSONL_PART_BYTES"]

_RESERVED = ("id", "_id", "text", "title")
JSONL_PART_BYTES = 4 << 20
"""Target size of one part of a large JSONL file (one unit of work for an ingest worker)."""


@dataclass(frozen=True)
class FilePart:
    """Bytes ``[start, end)`` of a file, whose first line is line number ``first_line``."""

    start: int
    end: int
    first_line: int


def jsonl_parts(path: Path, target_bytes: int | None = None) -> list[FilePart | None]:
    """Split a JSONL file at line boundaries into parts of about ``target_bytes`` (default
    ``JSONL_PART_BYTES``); ``[None]`` means: read it whole."""
    target_bytes = target_bytes or JSONL_PART_BYTES
    size = path.stat().st_size
    if size <= target_bytes:
        return [None]
    parts: list[FilePart | None] = []
    start, line = 0, 1
    with open(path, "rb") as fh:
        while start < size:
            if start + target_bytes >= size:
                end = size
            else:
                fh.seek(start + target_bytes)
                fh.readline()
                end = fh.tell()
            fh.seek(start)
            newlines = fh.read(end - start).count(b"\n")
            parts.append(FilePart(start, end, line))
            line += newlines
            start = end
    return parts


def _has_surrogate(value: object) -> bool:
    """Whether a decoded JSON value holds a lone surrogate anywhere (keys included)."""
    if isinstance(value, str):
        return LONE_SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


def _read(path: Path, part: FilePart | None) -> tuple[str, int, int]:
    """(text, number of its first line, undecodable sequences replaced)."""
    if part is None:
        return *decode_bytes(path.read_bytes(), str(path)), 1
    with open(path, "rb") as fh:
        fh.seek(part.start)
        data = fh.read(part.end - part.start)
    text, replaced = decode_bytes(data, str(path))
    return text, replaced, part.first_line


def load_jsonl(path: Path, doc_id: str, part: FilePart | None = None) -> Iterator[Document | BadRecord | LoadWarning]:
    """Each non-empty line is a document; a malformed line yields a :class:`BadRecord` naming the line."""
    text, replaced, first = _read(path, part)
    if replaced:
        yield replaced_warning(path, replaced)
    for lineno, line in enumerate(text.split("\n"), start=first):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield BadRecord(str(path), f"{path}:{lineno}: invalid JSON: {exc.msg}")
            continue
        rid = record.get("id", record.get("_id")) if isinstance(record, dict) else None
        body = record.get("text") if isinstance(record, dict) else None
        if not isinstance(record, dict):
            yield BadRecord(str(path), f"{path}:{lineno}: expected a JSON object")
        elif rid is None or not isinstance(body, str):
            yield BadRecord(str(path), f'{path}:{lineno}: needs an "id" and a string "text"')
        elif _has_surrogate(record):
            yield BadRecord(str(path), f"{path}:{lineno}: a lone surrogate escape (e.g. \\ud800) is not text")
        else:
            yield Document(
                id=str(rid),
                text=body,
                title=str(record.get("title") or ""),
                source=f"{path}#{lineno}",
                format="jsonl",
                metadata={k: v for k, v in record.items() if k not in _RESERVED},
            )
