"""JSON Lines: one document per line with ``id``, ``text``, optional ``title``; other fields -> metadata."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ingest.document import Document, LoadError
from ingest.loaders.text import decode_bytes

__all__ = ["load_jsonl"]

_RESERVED = ("id", "_id", "text", "title")


def load_jsonl(path: Path, doc_id: str) -> Iterator[Document]:
    """Each non-empty line is a document; a malformed line fails the file, naming the line."""
    text = decode_bytes(path.read_bytes(), str(path))
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LoadError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc
        if not isinstance(record, dict):
            raise LoadError(f"{path}:{lineno}: expected a JSON object")
        rid = record.get("id", record.get("_id"))
        body = record.get("text")
        if rid is None or not isinstance(body, str):
            raise LoadError(f'{path}:{lineno}: needs an "id" and a string "text"')
        metadata = {k: v for k, v in record.items() if k not in _RESERVED}
        yield Document(
            id=str(rid),
            text=body,
            title=str(record.get("title") or ""),
            source=f"{path}#{lineno}",
            format="jsonl",
            metadata=metadata,
        )
