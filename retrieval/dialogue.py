"""History-aware retrieval queries for multi-turn conversations, with no LLM (and better with one).

The last user turn of a chat is often elliptical ("那他欠的钱谁来还？"). The builder carries the earlier
turns of the current topic forward and stops at a topic switch: a turn that opens with a new-topic marker
(另外/还有个事/好的。还有…) or, when a similarity function is given, one unrelated to the turns after it.

- Dense leg: a contextual query (the most recent user turns verbatim, older ones reduced to their jieba
  TF-IDF keywords, then the last turn). With a dense leg, the most recent turn + last turn also run as a
  second, lighter query in both legs (left out in pure BM25 mode, where it hurt).
- BM25 leg: one weighted query over the topic's turns (:func:`lexical_parts`): the last turn at full
  weight, earlier user turns lighter the older they are, the assistant's replies lighter still. BM25 sums
  over query terms, so recency weighting is a term weight rather than a separate fused list.
- With a dense leg, a self-contained last turn is also searched alone (both legs) and fused with RRF at
  equal weight; an elliptical one is not (alone it lacks its subject, and fusing it in measurably hurt),
  and in pure BM25 mode neither is (the weighted turns query already holds it at full weight; a separate
  list hurt on the tuning dialogues). An optional LLM rewriter adds its standalone question as another query.
- A last turn that opens with a new-topic marker and stands alone (:func:`switches_topic`) is searched
  alone: the conversation has moved on.
- The turn weights depend on the index's domain (:func:`turn_weights`): medical indexes leave out the
  recent-turn query and stress an elliptical last turn's subject (the context's top keywords) in BM25.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from retrieval.errors import InputError
from retrieval.protocols import Rewriter
from retrieval.searcher import BM25, HYBRID, SearchMode, SearchOptions
from retrieval.text.analyzer import Analyzer

__all__ = [
    "DialogueMode",
    "DIALOGUE_MODES",
    "DialogueQueries",
    "DialogueQueryBuilder",
    "user_turns",
    "is_elliptical",
    "opens_new_topic",
    "switches_topic",
    "lexical_parts",
    "TurnWeights",
    "DOMAIN_TURN_WEIGHTS",
    "turn_weights",
    "REWRITE_WEIGHT",
]

DialogueMode = Literal["auto", "last", "concat", "concat-user"]
DIALOGUE_MODES: tuple[DialogueMode, ...] = get_args(DialogueMode)
Similarity = Callable[[str, str], float]


# The most recent context turns are carried verbatim; older ones as keywords, fewer the older they are.
VERBATIM_TURNS = 2
OLDER_KEYWORDS = 6
KEYWORD_DECAY = 0.5
MAX_CONTEXT_TURNS = 4
# Fusion weights: the contextual query, the most recent turn + last turn (recency), the last turn alone
# when self-contained, the LLM rewrite. The recent-turn and last-turn-alone queries run only with a dense
# leg: in pure BM25 mode a second BM25 list beside the recency-weighted turns query (which already holds
# the last turn at full weight) hurt. Every weight here was chosen on the tuning sets only; the protocol
# and the measurements are in docs/evaluation.md ("The multi-turn builder's weights").
CONTEXT_WEIGHT = 1.0
RECENT_WEIGHT = 0.25
SELF_CONTAINED_LAST_WEIGHT = 1.0
# REWRITE_WEIGHT is ZHRAG_REWRITE_WEIGHT's default: with an oracle rewrite, heavier weights win (README);
# a real LLM's best weight is unmeasured here.
REWRITE_WEIGHT = 1.0
# The lexical (BM25) leg of the contextual query is one weighted query over the turns of the topic: the
# last turn at 1, each earlier user turn LEXICAL_DECAY times its successor, the assistant's replies at
# ASSISTANT_WEIGHT times the user turn they answer (they name the topic in the assistant's words).
LEXICAL_DECAY = 0.8
ASSISTANT_WEIGHT = 0.5
# In hybrid mode a conversation's BM25 legs are fused at this fraction of their usual weight: with several
# BM25 lists, the dense leg's contextual query was the one being outvoted.
LEXICAL_LEG_WEIGHT = 0.75


@dataclass(frozen=True)
class TurnWeights:
    """How the builder weighs a conversation's turns (defaults: the constants above)."""

    decay: float = LEXICAL_DECAY
    assistant: float = ASSISTANT_WEIGHT
    recent: float = RECENT_WEIGHT  # 0 leaves the recent-turn query out
    lexical_leg: float = LEXICAL_LEG_WEIGHT  # the BM25 legs' share of the fusion, relative to the usual
    # An elliptical last turn's subject: this many TF-IDF keywords of the topic's earlier user turns, added
    # to the BM25 query at subject_weight (0 keywords: none). A plain concatenation cannot stress them.
    subject_terms: int = 0
    subject_weight: float = 0.5


# Per index domain (others get the defaults). Medical consultations state the condition first, and the
# recent turn alone (a symptom, a drug) points at generic answers: its extra query hurts there. A
# follow-up such as 这个病有哪些表现？ is about the condition named earlier, so two subject keywords of the
# earlier turns join its BM25 query. Measured in docs/evaluation.md.
DOMAIN_TURN_WEIGHTS: dict[str, TurnWeights] = {"medical": TurnWeights(recent=0.0, subject_terms=2)}


def turn_weights(domain: str | None) -> TurnWeights:
    """The turn weights for an index of ``domain``."""
    return DOMAIN_TURN_WEIGHTS.get(domain or "", TurnWeights())


# A last turn with at most this many content words is treated as elliptical even without a pronoun.
SHORT_TURN_WORDS = 4
MARKER_WINDOW = 16

_NEW_TOPIC = re.compile(
    r"(另外|还有(一)?(个|件)(事|问题)|还有一个(事|问题)|换个(话题|问题)|再问(一下|个|一个)|另一个问题|顺便问|"
    r"题外话|说个别的|问点别的|另一件事|我还想问|顺带问|^对了[，,。.!！ ]|"
    r"^(好的|好|行|明白了?|了解了?|知道了|谢谢|嗯)[。，,.!！ ]*(还有|对了)[，,])"
)
# An acknowledgement opening a turn closes the previous exchange: what follows is a new topic.
_ACKNOWLEDGEMENT = re.compile(r"^(好的|明白了?|了解了?|知道了|谢谢(你|您)?|行吧?)[。，,.!！~ ]")
# Words that, opening a turn, lean on what was said before it.
_CONTEXT_OPENERS = "那|这|其|该|此|上述|前面|刚才|如果这样|要是这样"
_ANAPHORA = re.compile(
    rf"^({_CONTEXT_OPENERS})"
    r"|(他|她|它|这样|那样|这些|那些|这事|那事|上述|前述|对方)"
    # demonstrative (+ numeral) + classifier: 这种, 那笔, 这两种, 那一份, 这几个 ...
    r"|[这那][一两几]?[种个件笔份次位家批条项栋楼套辆块样]"
)


# A pronoun opening a turn (after its marker); 这几天 / 这段时间 / 这次 point at the present, not the past turns.
_LEADING_ANAPHORA = re.compile(rf"(?!这([几两些]天|段时间|段日子|阵子|一?次))({_CONTEXT_OPENERS}|他|她|它|对方)")


def user_turns(messages: Sequence[Mapping[str, str]]) -> list[str]:
    """The non-empty user turns of an OpenAI-format conversation, in order."""
    return [m["content"].strip() for m in messages if m.get("role") == "user" and m.get("content", "").strip()]


def lexical_parts(
    messages: Sequence[Mapping[str, str]], context_turns: int, weights: TurnWeights | None = None
) -> list[tuple[str, float]]:
    """Weighted (text, weight) parts for the BM25 leg: the last user turn and the ``context_turns`` before
    it, each ``weights.decay`` times its successor, the assistant's replies to those turns at
    ``weights.assistant`` of theirs.
    """
    weights = weights or TurnWeights()
    parts: list[tuple[str, float]] = []
    age = -1  # of the user turn most recently passed while walking backwards
    for message in reversed(messages):
        text = (message.get("content") or "").strip()
        if not text:
            continue
        if message.get("role") == "user":
            age += 1
            if age > context_turns:
                break
            parts.append((text, weights.decay**age))
        elif message.get("role") == "assistant" and 0 <= age < context_turns and weights.assistant > 0:
            # a reply to the user turn before it, which is one turn older than the one just passed
            parts.append((text, weights.assistant * weights.decay ** (age + 1)))
    return parts[::-1]


def opens_new_topic(turn: str) -> bool:
    """Whether a turn opens with a new-topic marker (另外, 还有个事, 换个问题, 好的。…)."""
    head = turn.strip()[:MARKER_WINDOW]
    return bool(_NEW_TOPIC.search(head) or _ACKNOWLEDGEMENT.match(head))


def switches_topic(turn: str, analyzer: Analyzer) -> bool:
    """Whether a last turn moves to a new topic on its own: it opens with a new-topic marker (另外，/
    换个问题，/ 对了，…) and what follows stands alone — it does not open with a pronoun (另外那个人呢？,
    再问一下，那他…) and has more than a few content words. A pronoun later in a long question usually
    points inside it (另外，我父亲…但他有高血压), so :func:`is_elliptical` would be too strict here."""
    head = turn.strip()
    opening = _NEW_TOPIC.match(head)
    if opening is None:
        return False
    rest = head[opening.end() :].lstrip("，,。.：: ")
    return not _LEADING_ANAPHORA.match(rest) and len(set(analyzer.words(rest))) > SHORT_TURN_WORDS


def is_elliptical(turn: str, analyzer: Analyzer) -> bool:
    """Whether a turn leans on earlier context: anaphora (那/这种情况/他…) or very few content words."""
    return bool(_ANAPHORA.search(turn)) or len(set(analyzer.words(turn))) <= SHORT_TURN_WORDS


@dataclass
class DialogueQueries:
    """The retrieval queries for a conversation and their fusion weights (parallel lists)."""

    queries: list[str]
    weights: list[float]
    lexical: list[list[tuple[str, float]] | None] = field(default_factory=list)
    context_turns: list[str] = field(default_factory=list)
    elliptical: bool = False
    rewritten: str | None = None
    lexical_leg: float = 1.0
    """Scales the BM25 legs' fusion weight (1: as for a single question)."""

    def search_options(self, base: SearchOptions, leg_weights: Mapping[str, float]) -> SearchOptions:
        """``base`` with these queries' fusion weights and BM25 parts (search ``self.queries`` with it).

        Args:
            base: The request's options; its per-leg ``weights`` win over ``leg_weights``.
            leg_weights: The searcher's default per-leg weights (``Searcher.weights``), which
                :attr:`lexical_leg` scales; required, so that a caller cannot silently drop the configured ones.
        """
        weights = base.weights
        if self.lexical_leg != 1.0:
            merged = {**leg_weights, **(base.weights or {})}
            weights = {**merged, BM25: merged.get(BM25, 1.0) * self.lexical_leg}
        return replace(base, query_weights=self.weights, lexical=self.lexical or None, weights=weights)


class DialogueQueryBuilder:
    """Build retrieval queries from a conversation.

    Args:
        analyzer: The BM25 analyzer (its jieba tokenizer and stopwords drive keyword extraction).
        similarity: Optional turn similarity (e.g. embedding cosine) for topic-switch detection.
        min_similarity: Turns less similar than this to the later context start a different topic.
        rewriter: Optional LLM rewriter (anything with ``rewrite(messages) -> str | None``).
        weights: Turn weights (:func:`turn_weights` of the index's domain); the defaults when omitted.
        rewrite_weight: Fusion weight of the rewritten question against the builder's own queries.
    """

    def __init__(
        self,
        analyzer: Analyzer,
        similarity: Similarity | None = None,
        min_similarity: float | None = None,
        rewriter: Rewriter | None = None,
        weights: TurnWeights | None = None,
        rewrite_weight: float = REWRITE_WEIGHT,
    ) -> None:
        self.analyzer = analyzer
        self.similarity = similarity
        self.min_similarity = min_similarity
        self.rewriter = rewriter
        self.weights = weights or TurnWeights()
        self.rewrite_weight = rewrite_weight

    def keywords(self, text: str, k: int) -> list[str]:
        """Top-``k`` TF-IDF keywords of ``text`` (Simplified, normalised)."""
        return self.analyzer.keywords(text, k)

    def _related(self, earlier: str, later: Sequence[str]) -> bool:
        if self.similarity is None or self.min_similarity is None:
            return True
        return max(self.similarity(earlier, t) for t in later) >= self.min_similarity

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

    def build(
        self, messages: Sequence[Mapping[str, str]], mode: DialogueMode = "auto", search_mode: SearchMode = HYBRID
    ) -> DialogueQueries:
        """Retrieval queries for the last user turn of ``messages``.

        Args:
            messages: OpenAI-format conversation (``role``/``content``); the last user turn is answered.
            mode: ``auto`` (this builder), ``last`` (last user turn alone), ``concat`` (all turns, user and
                assistant, naively concatenated) or ``concat-user`` (all user turns concatenated).
            search_mode: The searcher mode the queries are for (``hybrid``, ``dense``, ``bm25``): in pure
                BM25 mode the recent-turn query is left out (see ``RECENT_WEIGHT``).

        Raises:
            ValueError: when there is no user turn.
        """
        turns = user_turns(messages)
        if not turns:
            raise InputError("the conversation has no user turn")
        last = turns[-1]
        if mode == "last" or len(turns) == 1:
            return DialogueQueries([last], [1.0])
        if mode == "concat":
            everything = [m["content"].strip() for m in messages if m.get("role") in ("user", "assistant")]
            return DialogueQueries(["\n".join(t for t in everything if t)], [1.0], context_turns=turns[:-1])
        if mode == "concat-user":
            return DialogueQueries(["\n".join(turns)], [1.0], context_turns=turns[:-1])
        if switches_topic(last, self.analyzer):
            # The old topic's turns would only pull its documents back in.
            return DialogueQueries([last], [1.0])
        elliptical = is_elliptical(last, self.analyzer)
        context = self.context(turns[:-1])
        split = max(0, len(context) - VERBATIM_TURNS)
        verbatim = context[split:]
        carried: list[str] = []
        for age, turn in enumerate(reversed(context[:split])):
            k = max(1, round(OLDER_KEYWORDS * KEYWORD_DECAY**age))
            carried = [w for w in self.keywords(turn, k) if w not in carried] + carried
        contextual = " ".join([*carried, *verbatim, last])
        queries, weights = [contextual], [CONTEXT_WEIGHT]
        parts = lexical_parts(messages, len(context), self.weights)
        if elliptical and context and self.weights.subject_terms > 0:
            subject = self.keywords(" ".join(context), self.weights.subject_terms)
            if subject:
                parts.append((" ".join(subject), self.weights.subject_weight))
        lexical: list[list[tuple[str, float]] | None] = [parts]
        if len(context) > 1 and search_mode != BM25 and self.weights.recent > 0:
            queries.append(f"{context[-1]} {last}")
            weights.append(self.weights.recent)
            lexical.append(None)
        if not elliptical and search_mode != BM25:
            queries.append(last)
            weights.append(SELF_CONTAINED_LAST_WEIGHT)
            lexical.append(None)
        rewritten = self.rewriter.rewrite(messages) if self.rewriter is not None else None
        if rewritten:
            queries.insert(0, rewritten)
            weights.insert(0, self.rewrite_weight)
            lexical.insert(0, None)
        return DialogueQueries(
            queries, weights, lexical, context, elliptical, rewritten, lexical_leg=self.weights.lexical_leg
        )
