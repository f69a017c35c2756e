"""Chinese text normalisation: full-width forms, whitespace, control characters, Traditional -> Simplified."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = ["normalize_text", "to_simplified", "replace_surrogates", "LONE_SURROGATE", "FULLWIDTH_TABLE"]

# Full-width ASCII letters/digits/symbols map to half-width by a fixed offset. CJK punctuation that
# carries sentence structure (，。？！：；（）) is deliberately kept full-width.
_FULLWIDTH_OFFSET = 0xFEE0
_KEEP_FULLWIDTH = frozenset("，。？！：；（）、")
FULLWIDTH_TABLE = {cp: cp - _FULLWIDTH_OFFSET for cp in range(0xFF01, 0xFF5F) if chr(cp) not in _KEEP_FULLWIDTH}
FULLWIDTH_TABLE[0x3000] = ord(" ")  # ideographic space
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
"""A surrogate alone in a Python string (JSON's ``"\\ud800"``): not text, and not encodable as UTF-8."""


def replace_surrogates(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD, so it can be tokenised and stored."""
    return LONE_SURROGATE.sub("\ufffd", text) if LONE_SURROGATE.search(text) else text


def _drop_control(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc" and ch not in "\n\t"


def normalize_text(text: str) -> str:
    """Normalise Chinese text before chunking or querying.

    Lone surrogates become U+FFFD; full-width letters, digits and symbols become half-width (CJK
    punctuation is kept), zero-width and control characters are removed, line endings become ``\\n``, runs of spaces collapse to one,
    lines are stripped and three or more newlines collapse to a paragraph break.

    Args:
        text: Raw text.

    Returns:
        The normalised text.
    """
    text = replace_surrogates(text).replace("\r\n", "\n").replace("\r", "\n")
    text = text.translate(FULLWIDTH_TABLE).translate(_ZERO_WIDTH)
    if any(_drop_control(ch) for ch in text):
        text = "".join(ch for ch in text if not _drop_control(ch))
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", text).strip()


@lru_cache(maxsize=1)
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


def to_simplified(text: str) -> str:
    """Convert Traditional Chinese to Simplified (OpenCC ``t2s``); Simplified text is unchanged."""
    return _t2s().convert(text)
