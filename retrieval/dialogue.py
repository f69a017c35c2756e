"""History-aware retrieval queries for multi-turn conversations, with no LLM.

The last user turn of a chat is often elliptical ("那他欠的钱谁来还？"). The builder carries forward the
salient subject terms (jieba TF-IDF keywords, recency-weighted) of the earlier user turns that belong to
the current topic, and stops at a topic switch: a turn that opens with a new-topic marker (另外/还有个事…)
or that is unrelated to the turns after it. Retrieval then runs for the contextual query *and* the last
turn alone, fused with RRF, so a self-contained last turn never gets worse.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from retrieval.text.analyzer import Analyzer

__all__ = [
    "DialogueMode",
    "DialogueQueries",
    "DialogueQueryBuilder",
    "user_turns",
    "is_elliptical",
    "opens_new_topic",
]

DialogueMode = Literal["auto", "last", "concat"]
Similarity = Callable[[str, str], float]

# Keywords carried from the most recent context turn; each older turn gets this times DECAY (at least 1).
RECENT_KEYWORDS = 8
KEYWORD_DECAY = 0.5
MAX_CONTEXT_TURNS = 3
# Fusion weight of the last-turn-alone query when the last turn is elliptical (it lacks the subject).
ELLIPTICAL_LAST_WEIGHT = 0.2
SELF_CONTAINED_LAST_WEIGHT = 1.0
CONTEXT_WEIGHT = 1.0
# Turns that share fewer content words than this are unrelated when no similarity function is given.
MIN_SHARED_WORDS = 1
# A last turn with at most this many content words is treated as elliptical even without a pronoun.
SHORT_TURN_WORDS = 4
MARKER_WINDOW = 16

_NEW_TOPIC = re.compile(
    r"(另外|还有(一)?(个|件)(事|问题)|还有一个(事|问题)|换个(话题|问题)|再问(一下|个|一个)|另一个问题|顺便问|"
    r"题外话|说个别的|问点别的|另一件事)"
)
_ANAPHORA = re.compile(
    r"^(那|这|他|她|它|其|该|此|上述|前面|刚才|这种|那种|这样|那样|这个|那个|这些|那些|如果这样|要是这样)"
    r"|(这种情况|那种情况|这样的话|那样的话|这种|那种|这事|那事|这个事|他们|他这|她这|上述|这笔|那笔)"
)


def user_turns(messages: Sequence[Mapping[str, str]]) -> list[str]:
    """The non-empty user turns of an OpenAI-format conversation, in order."""
    return [m["content"].strip() for m in messages if m.get("role") == "user" and m.get("content", "").strip()]


def opens_new_topic(turn: str) -> bool:
    """Whether a turn opens with a new-topic marker (另外, 还有个事, 换个问题, ...)."""
    return bool(_NEW_TOPIC.search(turn[:MARKER_WINDOW]))


def is_elliptical(turn: str, analyzer: Analyzer) -> bool:
    """Whether a turn leans on earlier context: anaphora (那/这种情况/他…) or very few content words."""
    return bool(_ANAPHORA.search(turn)) or len(set(analyzer.words(turn))) <= SHORT_TURN_WORDS


@dataclass
class DialogueQueries:
    """The retrieval queries for a conversation and their fusion weights (parallel lists)."""

    queries: list[str]
    weights: list[float]
    context_turns: list[str] = field(default_factory=list)
    elliptical: bool = False


class DialogueQueryBuilder:
    """Build retrieval queries from a conversation.

    Args:
        analyzer: The BM25 analyzer (its jieba tokenizer and stopwords drive keyword extraction).
        similarity: Optional turn similarity (e.g. embedding cosine) for topic-switch detection.
        min_similarity: Turns less similar than this to the later context start a different topic.
    """

    def __init__(
        self, analyzer: Analyzer, similarity: Similarity | None = None, min_similarity: float | None = None
    ) -> None:
        from jieba.analyse.tfidf import TFIDF

        self.analyzer = analyzer
        self.similarity = similarity
        self.min_similarity = min_similarity
        self._tfidf = TFIDF()
        self._tfidf.tokenizer = analyzer._tokenizer
        self._tfidf.stop_words = set(self._tfidf.stop_words) | set(analyzer.stopwords)

    def keywords(self, text: str, k: int) -> list[str]:
        """Top-``k`` TF-IDF keywords of ``text`` (Simplified, normalised)."""
        with self.analyzer._lock:
            return list(self._tfidf.extract_tags(self.analyzer.prepare(text), topK=k))

    def _related(self, earlier: str, later: Sequence[str]) -> bool:
        if self.similarity is not None and self.min_similarity is not None:
            return max(self.similarity(earlier, t) for t in later) >= self.min_similarity
        words = set(self.analyzer.words(earlier))
        return any(len(words & set(self.analyzer.words(t))) >= MIN_SHARED_WORDS for t in later)

    def context(self, history: Sequence[str]) -> list[str]:
        """The earlier user turns of the current topic, oldest first (at most ``MAX_CONTEXT_TURNS``)."""
        chosen: list[str] = []
        for turn in reversed(history):
            if chosen and not self._related(turn, chosen):
                break
            chosen.insert(0, turn)
            if opens_new_topic(turn) or len(chosen) == MAX_CONTEXT_TURNS:
                break
        return chosen

    def build(self, messages: Sequence[Mapping[str, str]], mode: DialogueMode = "auto") -> DialogueQueries:
        """Retrieval queries for the last user turn of ``messages``.

        Args:
            messages: OpenAI-format conversation (``role``/``content``); the last user turn is answered.
            mode: ``auto`` (this builder), ``last`` (last user turn alone) or ``concat`` (all user turns).

        Raises:
            ValueError: when there is no user turn.
        """
        turns = user_turns(messages)
        if not turns:
            raise ValueError("the conversation has no user turn")
        last = turns[-1]
        if mode == "last" or len(turns) == 1:
            return DialogueQueries([last], [1.0])
        if mode == "concat":
            return DialogueQueries(["\n".join(turns)], [1.0], context_turns=turns[:-1])
        context = self.context(turns[:-1])
        carried: list[str] = []
        for age, turn in enumerate(reversed(context)):
            k = max(1, round(RECENT_KEYWORDS * KEYWORD_DECAY**age))
            carried.extend(w for w in self.keywords(turn, k) if w not in carried and w not in last)
        elliptical = is_elliptical(last, self.analyzer)
        if not carried:
            return DialogueQueries([last], [1.0], context_turns=context, elliptical=elliptical)
        contextual = f"{' '.join(carried)} {last}"
        last_weight = ELLIPTICAL_LAST_WEIGHT if elliptical else SELF_CONTAINED_LAST_WEIGHT
        return DialogueQueries([contextual, last], [CONTEXT_WEIGHT, last_weight], context, elliptical)
