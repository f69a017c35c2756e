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

__all__ = [
    "Analyzer",
    "default_analyzer",
    "load_stopwords",
    "load_synonyms",
    "synonym_set",
    "BUNDLED_USER_DICTS",
    "SYNONYM_SETS",
]

BUNDLED_USER_DICTS = ("legal_dict.txt", "medical_dict.txt")
_STOPWORDS_FILE = "stopwords.txt"
_SYNONYMS_FILE = "query_synonyms.txt"
_CJK_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
# A token must contain a CJK character, a letter or a digit to be indexed.
_CONTENT = re.compile(r"[\u3400-\u9fff\uf900-\ufaffA-Za-z0-9]")
BLOCK_CACHE_SIZE = 1 << 17
"""Segmented clauses remembered per analyzer (statutes repeat clauses and every chunk repeats its law title)."""


def _resource(name: str) -> Path:
    return Path(str(resources.files("retrieval.text") / "resources" / name))


def load_synonyms(path: Path | None = None) -> dict[str, list[str]]:
    """Read a query synonym list (``colloquial<TAB>statutory terms``); the bundled one by default."""
    path = path or _resource(_SYNONYMS_FILE)
    out: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            word, _, terms = line.partition("\t")
            out[word.strip()] = terms.split()
    return out


SYNONYM_SETS = ("legal", "none")
"""Named query synonym sets: ``legal`` (the bundled colloquial -> statutory list) and ``none``."""


def synonym_set(name: str) -> dict[str, list[str]]:
    """The query synonyms called ``name``: one of :data:`SYNONYM_SETS`, or a file of ``colloquial<TAB>terms``.

    Raises:
        FileNotFoundError: ``name`` is neither a set nor an existing file.
    """
    if name == "legal":
        return load_synonyms()
    if name == "none":
        return {}
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"query synonyms {name!r}: not one of {SYNONYM_SETS} and no such file")
    return load_synonyms(path)


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
        bigrams: Also index overlapping CJK character bigrams (robust to segmentation differences
            between colloquial questions and statute text).
        synonyms: Colloquial -> statutory expansions for queries: a set's name or file (see
            :func:`synonym_set`), a mapping, or ``None`` for the bundled legal list.
    """

    def __init__(
        self,
        stopwords: Iterable[str] | None = None,
        user_dicts: Sequence[Path | str] = (),
        bundled_dicts: bool = True,
        search_mode: bool = True,
        bigrams: bool = True,
        synonyms: dict[str, list[str]] | str | None = None,
    ) -> None:
        stopwords = None if stopwords is None else frozenset(stopwords)
        self._args = (stopwords, tuple(user_dicts), bundled_dicts, search_mode, bigrams, synonyms)
        dicts = [_resource(n) for n in BUNDLED_USER_DICTS] if bundled_dicts else []
        dicts += [Path(p) for p in user_dicts]
        for path in dicts:
            if not Path(path).is_file():
                raise FileNotFoundError(f"user dictionary not found: {path}")
        self._segmenter = _segmenter(tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in dicts))
        self.stopwords = load_stopwords() if stopwords is None else stopwords
        self.search_mode = search_mode
        self.bigrams = bigrams
        if isinstance(synonyms, str) or synonyms is None:
            self.synonyms_source = synonyms or "legal"
            self.synonyms = synonym_set(self.synonyms_source)
        else:
            self.synonyms_source, self.synonyms = "custom", synonyms
        self.user_dicts = [str(p) for p in user_dicts]

    def __reduce__(self) -> tuple[type[Analyzer], tuple[object, ...]]:
        """Pickled as its arguments: a worker process rebuilds the same analyzer (jieba state is not shared)."""
        return (Analyzer, self._args)

    def warm_up(self) -> None:
        """Load jieba's dictionaries now (before forking workers, so they inherit them)."""
        self("预热")

    def prepare(self, text: str) -> str:
        """Normalise and convert to Simplified: what is tokenised."""
        return to_simplified(normalize_text(text)).lower()

    def words(self, text: str) -> list[str]:
        """Plain (non search-mode) jieba words of ``text`` without stopwords, in order."""
        tokens = self._segmenter.words(self.prepare(text))
        return [t for t in tokens if _CONTENT.search(t) and t not in self.stopwords]

    def segment(self, prepared: str) -> list[str]:
        """jieba's words of a :meth:`prepare` d text (search mode or plain, as configured)."""
        return self._segmenter.segment(prepared, self.search_mode)

    def keywords(self, text: str, k: int) -> list[str]:
        """Top-``k`` TF-IDF keywords of ``text`` (jieba's IDF table; this analyzer's stopwords left out)."""
        return self._segmenter.keywords(self.prepare(text), k, self.stopwords)

    def __call__(self, text: str) -> list[str]:
        """Tokens of ``text`` for BM25 (documents and queries alike)."""
        prepared = self.prepare(text)
        tokens = self.segment(prepared)
        words = [t for t in tokens if _CONTENT.search(t) and t not in self.stopwords]
        if self.bigrams:
            words += [
                run[i : i + 2]
                for run in _CJK_RUN.findall(prepared)
                for i in range(len(run) - 1)
                if run[i : i + 2] not in self.stopwords
            ]
        return words

    def query_tokens(self, text: str) -> list[str]:
        """Tokens of a query: :meth:`__call__` plus statutory terms for colloquial words (老板 -> 用人单位)."""
        prepared = self.prepare(text)
        extra = [t for word, terms in self.synonyms.items() if word in prepared for t in self(" ".join(terms))]
        return self(text) + extra

    def config(self) -> dict[str, object]:
        """What the index manifest records about the analyzer."""
        return {
            "tokenizer": "jieba-search" if self.search_mode else "jieba",
            "bigrams": self.bigrams,
            "user_dicts": self.user_dicts,
            "stopwords": len(self.stopwords),
            "simplified": True,
            "synonyms": self.synonyms_source,
        }


class _Segmenter:
    """One jieba tokenizer (its dictionary is ~70 MB) with its lock, its cache of cut clauses and its TF-IDF
    table, shared by every analyzer of the same dictionaries (knowledge bases of other domains included)."""

    def __init__(self, dicts: Sequence[str]) -> None:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        self.tokenizer = jieba.Tokenizer()
        for path in dicts:
            self.tokenizer.load_userdict(path)
        self.lock = threading.Lock()  # jieba's lazy initialisation and TF-IDF state are not thread-safe
        self._blocks = jieba.re_han_default  # how jieba itself splits text into independently cut blocks
        self._cut_search = lru_cache(maxsize=BLOCK_CACHE_SIZE)(lambda b: tuple(self.tokenizer.lcut_for_search(b)))
        self._cut_plain = lru_cache(maxsize=BLOCK_CACHE_SIZE)(lambda b: tuple(self.tokenizer.lcut(b)))
        self._tfidf: object | None = None

    def segment(self, prepared: str, search_mode: bool) -> list[str]:
        """jieba's words of ``prepared``, block by block as jieba cuts it, each block's words cached."""
        cut = self._cut_search if search_mode else self._cut_plain
        tokens: list[str] = []
        with self.lock:
            for block in self._blocks.split(prepared):
                if block:
                    tokens.extend(cut(block))
        return tokens

    def words(self, prepared: str) -> list[str]:
        """jieba's plain cut of the whole text."""
        with self.lock:
            return self.tokenizer.lcut(prepared)

    def keywords(self, prepared: str, k: int, stopwords: frozenset[str]) -> list[str]:
        """TF-IDF keywords of ``prepared`` leaving out jieba's and the caller's stopwords."""
        from jieba.analyse.tfidf import TFIDF

        with self.lock:
            if self._tfidf is None:
                self._tfidf = TFIDF()
                self._tfidf.tokenizer = self.tokenizer  # type: ignore[attr-defined]
                self._jieba_stopwords = frozenset(self._tfidf.stop_words)  # type: ignore[attr-defined]
            self._tfidf.stop_words = self._jieba_stopwords | stopwords  # type: ignore[attr-defined]
            return list(self._tfidf.extract_tags(prepared, topK=k))  # type: ignore[attr-defined]


@lru_cache(maxsize=8)
def _segmenter(dicts: tuple[tuple[str, int, int], ...]) -> _Segmenter:
    """The segmenter of these dictionary files (path, mtime, size: an edited file is loaded again)."""
    return _Segmenter([path for path, _, _ in dicts])


@lru_cache(maxsize=1)
def default_analyzer() -> Analyzer:
    """A process-wide analyzer with the bundled stopwords and dictionaries."""
    return Analyzer()
