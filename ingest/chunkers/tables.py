"""Markdown tables inside a text: found as blocks, kept whole, or split by rows with the header repeated."""

from __future__ import annotations

import re

from ingest.chunkers.base import ChunkSettings, LengthFn, embed_text, text_splitter

__all__ = ["split_blocks", "table_parts", "has_table", "body_parts", "TABLE_SEPARATOR"]

_TABLE_LINE = re.compile(r"^\s*\|.*\|\s*$")
TABLE_SEPARATOR = re.compile(r"^\s*\|(?:\s*:?-{3,}:?\s*\|)+\s*$")
CAPTION_CHARS = 80
"""A short paragraph right above a table (表1 ..., a line ending in ：) travels with the table as its caption."""


def has_table(text: str) -> bool:
    """Whether the text holds a Markdown table (a ``|`` row followed by a ``| --- |`` separator)."""
    lines = text.split("\n")
    return any(_TABLE_LINE.match(a) and TABLE_SEPARATOR.match(b) for a, b in zip(lines, lines[1:], strict=False))


def split_blocks(text: str) -> list[tuple[str, str]]:
    """(kind, text) blocks in order, kind ``text`` or ``table``; a table takes the short paragraph above it
    (its caption) along."""
    lines = text.split("\n")
    blocks: list[tuple[str, str]] = []
    buffer: list[str] = []
    i = 0
    while i < len(lines):
        if _TABLE_LINE.match(lines[i]) and i + 1 < len(lines) and TABLE_SEPARATOR.match(lines[i + 1]):
            end = i + 2
            while end < len(lines) and _TABLE_LINE.match(lines[end]):
                end += 1
            caption = _take_caption(buffer)
            if "\n".join(buffer).strip():
                blocks.append(("text", "\n".join(buffer).strip()))
            blocks.append(("table", "\n".join([*([caption] if caption else []), *lines[i:end]])))
            buffer, i = [], end
            continue
        buffer.append(lines[i])
        i += 1
    if "\n".join(buffer).strip():
        blocks.append(("text", "\n".join(buffer).strip()))
    return blocks


def _take_caption(buffer: list[str]) -> str:
    """Pop and return the last non-empty line of ``buffer`` when it reads as a caption."""
    while buffer and not buffer[-1].strip():
        buffer.pop()
    if not buffer:
        return ""
    last = buffer[-1].strip()
    if (
        len(last) <= CAPTION_CHARS
        and not _TABLE_LINE.match(last)
        and (last.startswith(("表", "附表", "Table")) or last.endswith(("：", ":")) or not last.endswith(("。", "；")))
    ):
        buffer.pop()
        return last
    return ""


def table_parts(block: str, size: int, length: LengthFn) -> list[str]:
    """A table block (optional caption, header, separator, rows) in parts of at most ``size`` tokens, each
    repeating the caption and the header; a single row over the size stays whole in its own part."""
    lines = block.split("\n")
    sep = next(i for i, ln in enumerate(lines) if TABLE_SEPARATOR.match(ln))
    head, rows = lines[: sep + 1], lines[sep + 1 :]
    if length(block) <= size or not rows:
        return [block]
    parts: list[list[str]] = [[]]
    for row in rows:
        if parts[-1] and length("\n".join([*head, *parts[-1], row])) > size:
            parts.append([])
        parts[-1].append(row)
    return ["\n".join([*head, *part]) for part in parts]


def body_parts(body: str, context: str, settings: ChunkSettings, length: LengthFn) -> list[str]:
    """Chunk texts for a body embedded under ``context``: whole when it fits; else text split on sentence
    boundaries and each table kept whole or split by rows (never through a row)."""
    if length(embed_text(context, body)) <= settings.chunk_size:
        return [body]
    splitter = text_splitter(settings.chunk_size, settings.chunk_overlap, length)
    if not has_table(body):
        return splitter.split_text(body)
    budget = max(settings.chunk_size - (length(context) + 1 if context else 0), settings.chunk_size // 2)
    parts: list[str] = []
    for kind, text in split_blocks(body):
        if kind == "table":
            parts.extend(table_parts(text, budget, length))
        else:
            parts.extend(
                [text] if length(embed_text(context, text)) <= settings.chunk_size else splitter.split_text(text)
            )
    return parts
