"""The searcher: dense and BM25 legs, RRF fusion, filters, reranking, passage expansion and grouping."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

import numpy as np

from retrieval.citations import CitationIndex, Verdict
from retrieval.errors import UserError
from retrieval.fusion import RRF_K, reciprocal_rank_fusion
from retrieval.index import Index
from retrieval.metadata_filter import MetadataFilter, as_filter
from retrieval.protocols import Embedder, Reranker
from retrieval.stores import MISSING_ID
from retrieval.text import Analyzer, normalize_text, to_simplified
from retrieval.types import CONTINUED, Chunk, Hit

__all__ = [
    "Searcher",
    "SearchOptions",
    "SearchOutcome",
    "SearchMode",
    "SEARCH_MODES",
    "LegKind",
    "HYBRID",
    "DENSE",
    "BM25",
    "LEG_KINDS",
    "Expand",
    "EXPAND_CHOICES",
    "SearchError",
    "DEFAULT_CANDIDATES",
    "DEFAULT_RERANK_CANDIDATES",
    "LexicalParts",
    "Leg",
    "normalize_query",
]

SearchMode = Literal["hybrid", "dense", "bm25"]
"""How a search retrieves: both legs fused, or one of them alone."""
LegKind = Literal["dense", "bm25"]
"""A retrieval leg (its name in results, ``ranks`` and fusion weights)."""
HYBRID: SearchMode = "hybrid"
DENSE: LegKind = "dense"
BM25: LegKind = "bm25"
SEARCH_MODES: tuple[SearchMode, ...] = get_args(SearchMode)
LEG_KINDS: tuple[LegKind, ...] = get_args(LegKind)
Expand = Literal["none", "article", "neighbors"]
"""What each hit brings along: nothing, its whole statute article, or its neighbouring chunks."""
EXPAND_CHOICES: tuple[Expand, ...] = get_args(Expand)
DEFAULT_CANDIDATES = 300
"""Candidates each leg contributes before fusion (at least ``top_k``)."""
DEFAULT_RERANK_CANDIDATES = 30
"""How many fused candidates the reranker re-scores (at least ``top_k``)."""
LEG_SEPARATOR = "#"


@dataclass(frozen=True)
class Leg:
    """One ranked list fused by RRF: a retrieval kind run for one of the search's queries."""

    kind: LegKind
    query: int = 0
    """Position of the query it ran for (0 = the first)."""

    @property
    def name(self) -> str:
        """How the leg is shown in results: ``dense``/``bm25`` for the first query, ``dense#1``/``bm25#1`` after."""
        return f"{self.kind}{LEG_SEPARATOR}{self.query}" if self.query else self.kind


LexicalParts = Sequence[tuple[str, float]]
"""Weighted texts scored as one BM25 query (see ``SearchOptions.lexical``)."""


def normalize_query(text: str) -> str:
    """A query as the searcher sees it (normalised, Simplified): what its legs embed and tokenise."""
    return to_simplified(normalize_text(text))


class SearchError(UserError, ValueError):
    """A search request cannot be served (e.g. dense mode without an embedder)."""


@dataclass
class SearchOptions:
    """Everything a search call can vary.

    Attributes:
        top_k: Results to return.
        mode: ``hybrid`` (RRF of dense and BM25), ``dense`` or ``bm25``.
        filters: A :class:`MetadataFilter` or its ``{field: value | [values]}`` shorthand; it decides
            which chunks both legs may return (not a post-filter), so ``top_k`` matches come back when
            they exist.
        rerank: Re-score the fused top candidates with the configured reranker.
        score_threshold: Drop results whose final score is below it (scale depends on the final stage).
        expand: Return the whole statute article (``article``) or +-``neighbors`` chunks around a hit.
        neighbors: Chunks on each side for ``expand="neighbors"``.
        group_by: ``doc_id`` keeps only the best hit of each document.
        candidates: Per-leg candidate pool (``None`` = the searcher's default, at least ``top_k``).
        weights: Per-leg RRF weights, e.g. ``{"dense": 1.0, "bm25": 0.5}``.
        rrf_k: The RRF constant (``None`` = the searcher's default, 60).
        query_weights: With several queries, a fusion weight per query (multiplies the leg weight).
        lexical: Per query, how its BM25 leg is scored: ``None`` tokenises the query text; a list of
            (text, weight) parts scores one BM25 query ``sum(weight * BM25(part))``, each part scored as a plain
            query (e.g. a conversation's turns, older ones lighter); an empty list runs no BM25 leg
            for that query (dense only).
    """

    top_k: int = 5
    mode: SearchMode = HYBRID
    filters: MetadataFilter | Mapping[str, Any] | None = None
    rerank: bool = False
    score_threshold: float | None = None
    expand: Expand = "none"
    neighbors: int = 1
    group_by: Literal["doc_id"] | None = None
    candidates: int | None = None
    weights: Mapping[str, float] | None = None
    rrf_k: int | None = None
    query_weights: Sequence[float] | None = None
    lexical: Sequence[LexicalParts | None] | None = None


@dataclass
class SearchOutcome:
    """Hits plus what was searched."""

    hits: list[Hit]
    queries: list[str]
    took_ms: float
    mode: SearchMode
    reranked: bool = False
    debug: dict[str, Any] = field(default_factory=dict)
    lexical: list[tuple[str, float]] | None = None
    """The weighted texts a BM25 leg scored as one query (``SearchOptions.lexical``), if any."""
    citations: list[dict[str, Any]] = field(default_factory=list)
    """The statute citations found in the query and whether the index holds them (:class:`Verdict`)."""


class Searcher:
    """Query one index.

    Args:
        index: The open index.
        embedder: Query embedder (``None`` allows only ``bm25`` mode).
        analyzer: The BM25 analyzer that indexed the chunks; its ``query_tokens`` tokenises queries (adding
            statutory synonyms of colloquial words).
        reranker: Optional second stage.
        weights: Default per-leg RRF weights.
        rrf_k: Default RRF constant.
        candidates: Default per-leg candidate pool.
        citations: The index's statute articles: a query citing one (民法典第1165条) gets it first.
    """

    def __init__(
        self,
        index: Index,
        embedder: Embedder | None,
        analyzer: Analyzer,
        reranker: Reranker | None = None,
        weights: Mapping[str, float] | None = None,
        rrf_k: int = RRF_K,
        candidates: int = DEFAULT_CANDIDATES,
        citations: CitationIndex | None = None,
    ) -> None:
        self.index = index
        self.citations = citations
        self.rrf_k = rrf_k
        self.candidates = candidates
        self.embedder = embedder
        self.analyzer = analyzer
        self.reranker = reranker
        self.weights = dict(weights or {})

    def effective_mode(self, mode: SearchMode) -> SearchMode:
        """The mode a search in ``mode`` runs in: ``hybrid`` without an embedder is its BM25 leg alone."""
        return BM25 if mode == HYBRID and self.embedder is None else mode

    def _check(self, options: SearchOptions) -> None:
        """Refuse what this searcher cannot do, whatever the query or filter turns out to find."""
        if options.mode not in SEARCH_MODES:
            raise SearchError(f"unknown mode {options.mode!r}; choose one of {SEARCH_MODES}")
        if options.rerank and self.reranker is None:
            raise SearchError("reranking was asked for but no reranker is configured (--reranker / ZHRAG_RERANKER)")
        if options.mode == DENSE and self.embedder is None:
            raise SearchError("dense retrieval needs an embedding model; use mode 'bm25' or load the model")

    def rrf_k_for(self, options: SearchOptions) -> int:
        """The RRF constant a search uses."""
        return self.rrf_k if options.rrf_k is None else options.rrf_k

    # -- legs ------------------------------------------------------------------------------------
    def _embed_queries(self, queries: Sequence[str]) -> Future[np.ndarray]:
        """Start embedding the queries (a batching embedder queues them; the BM25 leg runs meanwhile)."""
        if self.embedder is None:
            raise SearchError("dense retrieval needs an embedding model; use mode 'bm25' or load the model")
        return self.embedder.submit_queries(list(queries))

    def _dense(self, vectors: np.ndarray, pool: int, allowed: np.ndarray | None) -> list[list[tuple[int, float]]]:
        scores, ids = self.index.store.search(vectors, pool, allowed)
        return [
            [(int(i), float(s)) for s, i in zip(row_s, row_i, strict=True) if i != MISSING_ID]
            for row_s, row_i in zip(scores, ids, strict=True)
        ]

    def _bm25(
        self, query: str, parts: LexicalParts | None, pool: int, allowed: np.ndarray | None
    ) -> list[tuple[int, float]]:
        if self.index.bm25 is None:
            return []
        tokenize = self.analyzer.query_tokens
        if parts is None:
            scores, rids = self.index.bm25.search(tokenize(query), pool, allowed)
        else:
            term_weights: dict[str, float] = {}
            for text, weight in parts:
                # A repeated word counts again, as in a plain query (counting it once per turn lost to a
                # plain concatenation of the turns on the tuning dialogues).
                for token in tokenize(text):
                    term_weights[token] = term_weights.get(token, 0.0) + weight
            scores, rids = self.index.bm25.search_weighted(term_weights, pool, allowed)
        return [(int(r), float(s)) for r, s in zip(rids, scores, strict=True)]

    def rank(
        self, queries: Sequence[str], options: SearchOptions, allowed: np.ndarray | None
    ) -> tuple[list[tuple[int, float]], dict[str, dict[int, tuple[int, float]]]]:
        """Fused (row id, score) ranking for one or more queries, and each leg's (rank, score) per row id."""
        pool = max(options.candidates or self.candidates, options.top_k)
        vectors = self._embed_queries(queries) if options.mode != BM25 else None
        lexical_legs: dict[Leg, list[tuple[int, float]]] = {}
        if options.mode != DENSE:
            lexical = list(options.lexical or [])
            for i, query in enumerate(queries):
                parts = lexical[i] if i < len(lexical) else None
                if parts is None or len(parts):
                    lexical_legs[Leg(BM25, i)] = self._bm25(query, parts, pool, allowed)
        legs: dict[Leg, list[tuple[int, float]]] = {}
        if vectors is not None:
            for i, ranked in enumerate(self._dense(vectors.result(), pool, allowed)):
                legs[Leg(DENSE, i)] = ranked
        legs.update(lexical_legs)
        detail = {leg.name: {rid: (rank, s) for rank, (rid, s) in enumerate(items, 1)} for leg, items in legs.items()}
        if len(legs) == 1:
            return next(iter(legs.values())), detail
        weights = {**self.weights, **(options.weights or {})}
        per_query = list(options.query_weights or [])

        def leg_weight(leg: Leg) -> float:
            query_weight = per_query[leg.query] if leg.query < len(per_query) else 1.0
            return weights.get(leg.kind, 1.0) * query_weight

        leg_weights = {leg.name: leg_weight(leg) for leg in legs}
        rankings = {leg.name: [rid for rid, _ in items] for leg, items in legs.items()}
        return reciprocal_rank_fusion(rankings, k=self.rrf_k_for(options), weights=leg_weights), detail

    # -- public ----------------------------------------------------------------------------------
    def search(self, query: str | Sequence[str], options: SearchOptions | None = None) -> SearchOutcome:
        """Search with one query or several (fused with RRF; the first is the one reranked against).

        Raises:
            SearchError: for an unknown mode, an empty query, or dense mode without an embedder.
            FilterError: for malformed filters.
        """
        start = time.perf_counter()
        options = options or SearchOptions()
        self._check(options)
        queries = [query] if isinstance(query, str) else list(query)
        queries = [normalize_query(q) for q in queries]
        if not all(queries):
            options = _drop_empty_queries(queries, options)
            queries = [q for q in queries if q]
        if not queries:  # only spaces or control characters: nothing to search for, nothing found
            return SearchOutcome([], [], _ms(start), options.mode)
        spec = as_filter(options.filters)
        allowed = self.index.docs.filter_rids(spec) if spec is not None else None
        if allowed is not None and len(allowed) == 0:
            return SearchOutcome([], queries, _ms(start), options.mode)
        if self.effective_mode(options.mode) != options.mode:
            # Serving without a model (``zhrag serve --no-model``): hybrid degrades to its lexical leg;
            # the outcome's ``mode`` says so. An explicit ``dense`` request still fails.
            options = replace(options, mode=BM25)
        ranked, detail = self.rank(queries, options, allowed)
        reranked = False
        if options.rerank:
            ranked = self._rerank(queries[0], ranked[: max(DEFAULT_RERANK_CANDIDATES, options.top_k)])
            reranked = True
        ranked, cited, verdicts = self._cited_first(queries, ranked, allowed)
        hits = self._materialise(ranked, detail, options, cited)
        weighted = next((list(parts) for parts in options.lexical or [] if parts), None)
        lexical = weighted if options.mode != DENSE else None
        citations = [v.to_dict() for v in verdicts]
        return SearchOutcome(hits, queries, _ms(start), options.mode, reranked, lexical=lexical, citations=citations)

    def _cited_first(
        self, queries: Sequence[str], ranked: list[tuple[int, float]], allowed: np.ndarray | None
    ) -> tuple[list[tuple[int, float]], set[int], list[Verdict]]:
        """Put the articles the query cites first (those the filter admits), at the best score."""
        if self.citations is None:
            return ranked, set(), []
        rids, verdicts = self.citations.cited_rids(queries, allowed)
        if not rids:
            return ranked, set(), verdicts
        cited = set(rids)
        best = ranked[0][1] if ranked else 1.0
        return [(r, best) for r in rids] + [(r, s) for r, s in ranked if r not in cited], cited, verdicts

    def _rerank(self, query: str, head: list[tuple[int, float]]) -> list[tuple[int, float]]:
        assert self.reranker is not None
        chunks = self.index.docs.get(rid for rid, _ in head)
        scores = self.reranker.score(query, [chunks[rid].embed_text for rid, _ in head])
        order = np.argsort(-np.asarray(scores), kind="stable")
        return [(head[i][0], float(scores[i])) for i in order]

    def _materialise(
        self,
        ranked: list[tuple[int, float]],
        detail: dict[str, dict[int, tuple[int, float]]],
        options: SearchOptions,
        cited: set[int] | None = None,
    ) -> list[Hit]:
        hits: list[Hit] = []
        seen_docs: set[str] = set()
        seen_passages: set[tuple[str, ...]] = set()
        # Grouping and expansion can drop candidates: read further windows until top_k or the pool ends.
        step = max(options.top_k * 4, options.top_k + 20)
        for begin in range(0, len(ranked), step):
            window = ranked[begin : begin + step]
            chunks = self.index.docs.get(rid for rid, _ in window)
            for rid, score in window:
                if options.score_threshold is not None and score < options.score_threshold:
                    continue
                chunk = chunks[rid]
                if options.group_by == "doc_id":
                    if chunk.doc_id in seen_docs:
                        continue
                    seen_docs.add(chunk.doc_id)
                if options.expand != "none":
                    chunk = self._expand(chunk, options)
                    key = tuple(chunk.metadata.get("chunk_ids", [chunk.id]))
                    if key in seen_passages:
                        continue
                    seen_passages.add(key)
                ranks = {leg: r for leg, info in detail.items() if (r := info.get(rid, (0, 0.0))[0])}
                leg_scores = {leg: info[rid][1] for leg, info in detail.items() if rid in info}
                match = "citation" if cited and rid in cited else "retrieval"
                hits.append(Hit(chunk=chunk, score=score, ranks=ranks, scores=leg_scores, match=match))
                if len(hits) == options.top_k:
                    return hits
        return hits

    def _expand(self, chunk: Chunk, options: SearchOptions) -> Chunk:
        siblings = self.index.docs.document_chunks(chunk.doc_id)
        if options.expand == "article" and chunk.metadata.get("article"):
            part = [c for c in siblings if c.metadata.get("article") == chunk.metadata["article"]]
        else:
            pos = next(i for i, c in enumerate(siblings) if c.id == chunk.id)
            n = options.neighbors if options.expand == "neighbors" else 0
            part = siblings[max(0, pos - n) : pos + n + 1]
        if len(part) <= 1:
            return chunk
        metadata = {**chunk.metadata, "expanded": options.expand, "chunk_ids": [c.id for c in part]}
        text = "\n".join(_strip_continuation(c) for c in part)
        return Chunk(
            id=chunk.id,
            doc_id=chunk.doc_id,
            text=text,
            embed_text=text,
            title=chunk.title,
            source=chunk.source,
            metadata=metadata,
            seq=chunk.seq,
            rid=chunk.rid,
        )


def _drop_empty_queries(queries: Sequence[str], options: SearchOptions) -> SearchOptions:
    """Options whose per-query lists stay aligned once the empty queries are dropped."""
    keep = [i for i, q in enumerate(queries) if q]

    def aligned(values: Sequence[Any] | None) -> list[Any] | None:
        return None if values is None else [values[i] for i in keep if i < len(values)]

    return replace(options, query_weights=aligned(options.query_weights), lexical=aligned(options.lexical))


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def _strip_continuation(chunk: Chunk) -> str:
    """A continued article part repeats its number (第X条（续）); drop that when parts are joined again."""
    article = chunk.metadata.get("article")
    marker = f"{article}{CONTINUED}" if article else None
    return chunk.text.removeprefix(marker) if marker and chunk.metadata.get("part", 1) > 1 else chunk.text
