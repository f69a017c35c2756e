"""Request and response schemas of the HTTP API (also used by ``zhrag search --json``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.settings import MAX_TOP_K
from retrieval.dialogue import DialogueMode
from retrieval.metadata_filter import MAX_CONDITIONS, Condition, MetadataFilter
from retrieval.searcher import HYBRID, Expand, SearchMode, SearchOutcome

__all__ = [
    "SearchRequest",
    "MetadataCondition",
    "SearchResponse",
    "SearchResult",
    "CitationOut",
    "ChatMessage",
    "EmbedRequest",
    "EmbedResponse",
    "OpenAIEmbeddingRequest",
    "OpenAIEmbeddingResponse",
    "to_search_response",
    "WeightedText",
    "MAX_MESSAGES",
    "MAX_MESSAGE_CHARS",
    "MAX_TOTAL_CHARS",
    "MAX_QUERY_CHARS",
    "MAX_EMBED_TEXTS",
]

MAX_QUERY_CHARS = 2000
MAX_MESSAGES = 20
MAX_MESSAGE_CHARS = 4000
MAX_TOTAL_CHARS = 16000
MAX_EMBED_TEXTS = 2048
FilterValue = str | int | float | bool | list[str | int | float | bool]


class MetadataCondition(BaseModel):
    """Dify's ``metadata_condition``, zhrag's filter language: conditions joined by ``and``/``or``."""

    logical_operator: Literal["and", "or"] = "and"
    conditions: list[Condition] = Field(max_length=MAX_CONDITIONS)

    def to_filter(self) -> MetadataFilter:
        """The core's filter."""
        return MetadataFilter(self.conditions, any_of=self.logical_operator == "or")


class ChatMessage(BaseModel):
    """One OpenAI-format chat message."""

    role: Literal["user", "assistant", "system"]
    content: str = Field(max_length=MAX_MESSAGE_CHARS)


class SearchRequest(BaseModel):
    """``POST /search``: a query, a conversation (``messages``), or both."""

    model_config = ConfigDict(extra="forbid")

    query: str | None = Field(None, max_length=MAX_QUERY_CHARS, description="The question")
    messages: list[ChatMessage] | None = Field(
        None,
        max_length=MAX_MESSAGES,
        description="OpenAI-format conversation; the last user turn is answered",
    )
    session_id: str | None = Field(None, max_length=128, description="Server-side conversation to continue")
    top_k: int = Field(5, ge=1, le=MAX_TOP_K)
    mode: SearchMode = HYBRID
    filters: MetadataCondition | dict[str, FilterValue] | None = Field(
        None,
        description='Metadata filter applied inside retrieval: {"law": "...", "article_no": [1, 2]} (equality / any of), '
        'or Dify\'s {"logical_operator": "and", "conditions": [{"name": "article_no", "comparison_operator": "≤", '
        '"value": 10}]}',
    )
    rerank: bool = False
    score_threshold: float | None = Field(None, description="Drop results scoring below this (higher = better)")
    expand: Expand = "none"
    neighbors: int = Field(1, ge=0, le=5)
    group_by: Literal["doc_id"] | None = None
    dialogue_mode: DialogueMode = "auto"

    @model_validator(mode="after")
    def _needs_input(self) -> SearchRequest:
        if not (self.query and self.query.strip()) and not self.messages and not self.session_id:
            raise ValueError("give a non-empty 'query' or 'messages'")
        if self.messages and sum(len(m.content) for m in self.messages) > MAX_TOTAL_CHARS:
            raise ValueError(f"conversation too long: at most {MAX_TOTAL_CHARS} characters in 'messages'")
        return self


class SearchResult(BaseModel):
    """One passage for the LLM."""

    id: str
    doc_id: str
    text: str
    score: float
    title: str
    source: str
    metadata: dict[str, Any]
    ranks: dict[str, int] = Field(default_factory=dict, description="Rank in each retrieval leg (1 = best)")
    leg_scores: dict[str, float] = Field(
        default_factory=dict, description="Raw score in each retrieval leg (cosine for dense, BM25 for bm25)"
    )
    match: Literal["retrieval", "citation"] = Field(
        "retrieval", description="citation: the query cites this statute article, so it comes first"
    )


class CitationOut(BaseModel):
    """A statute citation found in a text and whether the index holds it."""

    law: str | None = Field(description="The index's full title of the law (null: not a law in the index)")
    law_text: str = Field(description="The law as written in the text")
    article: str = Field(description="Canonical article, e.g. 第一千一百六十五条")
    paragraph: int | None = None
    item: int | None = None
    span: list[int] = Field(description="[start, end) of the citation in the text")
    found: bool
    reason: str | None = Field(
        None,
        description="Why not found: no law named | unknown law (no law zhrag knows of) | law not in index (a real "
        "law this index does not hold) | article not in index (the index holds part of the law) | no such article "
        "(…) | the filter excludes this article",
    )
    version: str | None = Field(None, description="The law's version (date) the article was found in")
    newer_version: str | None = Field(
        None, description="A newer version of the law in the index, which does not have this article"
    )
    title: str | None = Field(None, description="For a real law the index does not hold: its full title")
    replaced_by: str | None = Field(None, description="For a repealed law the index does not hold: its successor")


class WeightedText(BaseModel):
    """One part of a weighted BM25 query."""

    text: str
    weight: float


class SearchResponse(BaseModel):
    """``POST /search`` response."""

    results: list[SearchResult]
    query: str
    queries: list[str] = Field(description="The retrieval queries actually run")
    bm25_query: list[WeightedText] | None = Field(
        None,
        description="In a conversation, the turns the BM25 leg scored as one query and their weights "
        "(the last turn 1, older turns less); null when BM25 ran on the query texts",
    )
    mode: str
    reranked: bool = False
    took_ms: float
    session_id: str | None = None
    citations: list[CitationOut] = Field(
        default_factory=list, description="Statute citations in the query; a found one's article is ranked first"
    )


def to_search_response(outcome: SearchOutcome, query: str, session_id: str | None = None) -> SearchResponse:
    """Convert a searcher outcome to the API body."""
    results = [
        SearchResult(
            id=h.chunk.id,
            doc_id=h.chunk.doc_id,
            text=h.chunk.text,
            score=round(h.score, 6),
            title=h.chunk.title,
            source=h.chunk.source,
            metadata=h.chunk.metadata,
            ranks=h.ranks,
            leg_scores={leg: round(value, 6) for leg, value in h.scores.items()},
            match=h.match,
        )
        for h in outcome.hits
    ]
    return SearchResponse(
        results=results,
        query=query,
        queries=outcome.queries,
        bm25_query=None
        if outcome.lexical is None
        else [WeightedText(text=text, weight=round(weight, 4)) for text, weight in outcome.lexical],
        mode=outcome.mode,
        reranked=outcome.reranked,
        took_ms=outcome.took_ms,
        citations=[CitationOut(**c) for c in outcome.citations],
        session_id=session_id,
    )


class EmbedRequest(BaseModel):
    """``POST /embed``: one ``text`` or a list of ``texts``."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, max_length=MAX_QUERY_CHARS * 4)
    texts: list[str] | None = Field(None, max_length=MAX_EMBED_TEXTS)
    input_type: Literal["query", "document"] = "document"

    @model_validator(mode="after")
    def _one_of(self) -> EmbedRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        if self.texts is not None and not self.texts:
            raise ValueError("'texts' is empty")
        if any(not t.strip() for t in ([self.text] if self.text is not None else self.texts or [])):
            raise ValueError("an empty text has no embedding")
        return self


class EmbedResponse(BaseModel):
    """``POST /embed`` response (``embedding`` too when a single ``text`` was sent)."""

    model: str
    dim: int
    embeddings: list[list[float]]
    embedding: list[float] | None = None


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI ``POST /v1/embeddings``."""

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    input_type: Literal["query", "document", "passage"] | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _bounded(self) -> OpenAIEmbeddingRequest:
        items = [self.input] if isinstance(self.input, str) else self.input
        if not items:
            raise ValueError("'input' is empty")
        if len(items) > MAX_EMBED_TEXTS:
            raise ValueError(f"at most {MAX_EMBED_TEXTS} inputs per request")
        if any(not t.strip() for t in items):
            raise ValueError("an empty input has no embedding")
        return self


class OpenAIEmbeddingResponse(BaseModel):
    """OpenAI embeddings response."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    model: str
    usage: dict[str, int]
