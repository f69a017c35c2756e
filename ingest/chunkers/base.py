"""Shared chunking pieces: settings, stable ids, the Chinese sentence-aware splitter, numerals."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from retrieval.text.numerals import cn_to_int
from retrieval.types import Chunk

__all__ = [
    "ChunkSettings",
    "LengthFn",
    "ChunkerName",
    "CHUNKERS",
    "chunk_id",
    "make_chunk",
    "embed_text",
    "text_splitter",
    "CHINESE_SEPARATORS",
    "cn_to_int",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CHUNK_OVERLAP",
]

LengthFn = Callable[[str], int]
ChunkerName = Literal["auto", "statute", "section", "generic"]
CHUNKERS: tuple[ChunkerName, ...] = get_args(ChunkerName)
DEFAULT_CHUNK_SIZE = 512
DEFAULT_CHUNK_OVERLAP = 64
CHUNK_ID_LENGTH = 20
# Paragraphs, lines, then Chinese sentence ends, then clause marks, then characters.
CHINESE_SEPARATORS = ["\n\n", "\n", "。", "！", "？", "；", "…", "!", "?", ";", "，", ",", "、", " ", ""]
_SINGLE_SEPARATORS = tuple(sorted({ch for sep in CHINESE_SEPARATORS for ch in sep}))


@dataclass(frozen=True)
class ChunkSettings:
    """Chunker configuration (sizes in tokens of the embedding model's tokenizer)."""

    chunk_size: int = DEFAULT_CHUNK_SIZE
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
    chunker: ChunkerName = "auto"

    def __post_init__(self) -> None:
        if self.chunk_size < 16:
            raise ValueError(f"chunk size {self.chunk_size} is too small (minimum 16 tokens)")
        if not 0 <= self.chunk_overlap < self.chunk_size:
            raise ValueError(f"chunk overlap {self.chunk_overlap} must be in 0..{self.chunk_size - 1}")

    def to_dict(self) -> dict[str, Any]:
        """Manifest entry."""
        return asdict(self)


def chunk_id(doc_id: str, seq: int, text: str) -> str:
    """Stable id from the document id, the chunk's position and its text."""
    return hashlib.sha1(f"{doc_id}\x1f{seq}\x1f{text}".encode()).hexdigest()[:CHUNK_ID_LENGTH]


def embed_text(context: str, text: str) -> str:
    """What a chunk embeds: its context (law title, headings) on a line above its text."""
    return f"{context}\n{text}" if context else text


def make_chunk(
    doc_id: str, seq: int, text: str, context: str, title: str, source: str, metadata: dict[str, Any]
) -> Chunk:
    """A chunk whose embedded text is ``context`` + newline + ``text`` (just ``text`` without context)."""
    return Chunk(
        id=chunk_id(doc_id, seq, text),
        doc_id=doc_id,
        text=text,
        embed_text=embed_text(context, text),
        title=title,
        source=source,
        metadata=metadata,
        seq=seq,
    )


@functools.lru_cache(maxsize=64)
def _long_run(size: int) -> re.Pattern[str]:
    """A run of more than ``size`` characters without a separator."""
    return re.compile(rf"[^{re.escape(''.join(_SINGLE_SEPARATORS))}]{{{size + 1},}}")


def break_long_runs(text: str, size: int) -> str:
    """Put a line break every ``size`` characters into any run that has no separator at all.

    Without one, the recursive splitter falls back to single characters and measures each of them
    (and their merges) with the tokenizer: a 500,000-character line took 9 s, and twice that four times
    as long. A token covers at least one character, so a ``size``-character piece is rarely over
    ``size`` tokens; when it is, only that piece is split character by character.
    """
    return _long_run(size).sub(lambda m: "\n".join(m[0][i : i + size] for i in range(0, len(m[0]), size)), text)


class _Splitter:
    """langchain's splitter behind :func:`break_long_runs`."""

    def __init__(self, splitter: Any, size: int) -> None:
        self.splitter = splitter
        self.size = size

    def split_text(self, text: str) -> list[str]:
        return self.splitter.split_text(break_long_runs(text, self.size))


def text_splitter(size: int, overlap: int, length: LengthFn) -> _Splitter:
    """langchain's recursive splitter on Chinese sentence boundaries, measuring with ``length``."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(
        separators=CHINESE_SEPARATORS,
        keep_separator="end",
        chunk_size=size,
        chunk_overlap=overlap,
        length_function=length,
        strip_whitespace=True,
    )
    return _Splitter(splitter, size)
