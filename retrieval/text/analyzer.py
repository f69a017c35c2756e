"""The lexical analyzer: jieba search-mode tokens with stopwords and legal/medical user dictionaries.

It is the injected ``splitter`` of the BM25 leg and the keyword source of the multi-turn query builder.
Documents and queries go through the same function, so Traditional queries match Simplified statutes.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

from retrieval.text.normalize import normalize_text, to_simplified

__all__ = ["Analyzer", "default_analyzer", "load_stopwords", "BUNDLED_USER_DICTS"]

BUNDLED_USER_DICTS = ("legal_dict.txt", "medical_dict.txt")
_STOPWORDS_FILE = "stopwords.txt"
# A token must contain a CJK character, a letter or a digit to be indexed.
_CONTENT = re.compile(r"[\u3400-\u9fff\uf900-\ufaffA-Za-z0-9]")


def _resource(name: str) -> Path:
    return Path(str(resources.files("retrieval.text") / "resources" / name))


def load_stopwords(path: Path | None = None) -> frozenset[str]:
    """Read a stopword list (one word a line, ``#`` comments); the bundled one by default."""
    path = path or _resource(_STOPWORDS_FILE)
    words = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return frozenset(w for w in words if w and not w.startswith("#"))


class Analyzer:
    """Tokenise Chinese text for BM25: normalise, Traditional -> Simplified, jieba search mode, stopwords.

    Args:
        stopwords: Words to drop; ``None`` uses the bundled list, an empty set keeps everything.
        user_dicts: Extra jieba user dictionaries (``word [freq] [tag]`` per line). The bundled legal and
            medical dictionaries are always loaded first unless ``bundled_dicts`` is False.
        bundled_dicts: Load the bundled legal/medical dictionaries.
        search_mode: Use ``cut_for_search`` (long words plus their sub-words) instead of ``cut``.
    """

    def __init__(
        self,
        stopwords: Iterable[str] | None = None,
        user_dicts: Sequence[Path | str] = (),
        bundled_dicts: bool = True,
        search_mode: bool = True,
    ) -> None:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        self._tokenizer = jieba.Tokenizer()
        self._lock = threading.Lock()
        dicts = [_resource(n) for n in BUNDLED_USER_DICTS] if bundled_dicts else []
        dicts += [Path(p) for p in user_dicts]
        for path in dicts:
            if not Path(path).is_file():
                raise FileNotFoundError(f"user dictionary not found: {path}")
            self._tokenizer.load_userdict(str(path))
        self.stopwords = load_stopwords() if stopwords is None else frozenset(stopwords)
        self.search_mode = search_mode
        self.user_dicts = [str(p) for p in user_dicts]

    def prepare(self, text: str) -> str:
        """Normalise and convert to Simplified: what is tokenised."""
        return to_simplified(normalize_text(text)).lower()

    def words(self, text: str) -> list[str]:
        """Plain (non search-mode) jieba words of ``text`` without stopwords, in order."""
        with self._lock:
            tokens = self._tokenizer.lcut(self.prepare(text))
        return [t for t in tokens if _CONTENT.search(t) and t not in self.stopwords]

    def __call__(self, text: str) -> list[str]:
        """Tokens of ``text`` for BM25."""
        prepared = self.prepare(text)
        with self._lock:  # jieba's lazy initialisation is not thread-safe
            tokens = self._tokenizer.lcut_for_search(prepared) if self.search_mode else self._tokenizer.lcut(prepared)
        return [t for t in tokens if _CONTENT.search(t) and t not in self.stopwords]

    def config(self) -> dict[str, object]:
        """What the index manifest records about the analyzer."""
        return {
            "tokenizer": "jieba-search" if self.search_mode else "jieba",
            "user_dicts": self.user_dicts,
            "stopwords": len(self.stopwords),
            "simplified": True,
        }


@lru_cache(maxsize=1)
def default_analyzer() -> Analyzer:
    """A process-wide analyzer with the bundled stopwords and dictionaries."""
    return Analyzer()
