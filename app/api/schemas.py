"""Request and response schemas of the HTTP API (also used by ``zhrag search --json``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    model_validator,
)

from app.access import BASE_NAME_PATTERN
from app.api.errors import BLANK
from app.usecases.limits import (
    MAX_MESSAGE_CHARS,
    MAX_MESSAGES,
    MAX_NEIGHBORS,
    MAX_QUERY_CHARS,
    MAX_TOP_K,
    MAX_TOTAL_CHARS,
)
from app.usecases.search import SearchAnswer, SearchQuery
from retrieval.dialogue import DialogueMode
from retrieval.metadata_filter import MAX_CONDITIONS, MAX_VALUES, Condition, FieldName, MetadataFilter
from retrieval.searcher import HYBRID, Expand, SearchMode, SearchOptions

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
    "Whole",
    "has_text",
]

MAX_EMBED_TEXTS = 2048
FilterValue = (
    str | int | float | bool | Annotated[list[str | int | float | bool], Field(min_length=1, max_length=MAX_VALUES)]
)
_CONDITION_KEYS = {"conditions", "logical_operator"}
# additionalProperties: a key that is no field name is refused by the schema, not only by the server;
# without Dify's two keys, so that exactly one form matches
Filters = Annotated[
    dict[FieldName, FilterValue],
    Field(
        max_length=MAX_CONDITIONS,
        json_schema_extra={
            "additionalProperties": False,
            "not": {"anyOf": [{"required": [key]} for key in sorted(_CONDITION_KEYS)]},
        },
    ),
]


def _whole(value: Any) -> Any:
    if isinstance(value, (bool, str)):
        raise ValueError("must be an integer")
    return value


Whole = Annotated[int, Field(strict=False), BeforeValidator(_whole)]
"""An integer as JSON Schema has it: 3 or 3.0, never true or "3" (request models are otherwise strict)."""


def has_text(value: str | None) -> bool:
    """Whether ``value`` holds more than spaces, as the schema's pattern :data:`BLANK` decides."""
    return bool(value and value.strip())


_USER_TURN = {
    "type": "object",
    "properties": {"role": {"const": "user"}, "content": {"type": "string", "pattern": BLANK}},
    "required": ["role", "content"],
}
# A search needs something to answer: a query, a conversation with a user turn, or a stored conversation.
_SEARCH_INPUT = {
    "anyOf": [
        {"required": ["query"], "properties": {"query": {"type": "string", "pattern": BLANK}}},
        {"required": ["messages"], "properties": {"messages": {"type": "array", "contains": _USER_TURN}}},
        {"required": ["session_id"], "properties": {"session_id": {"type": "string"}}},
    ]
}


class MetadataCondition(BaseModel):
    """Dify's ``metadata_condition``, zhrag's filter language: conditions joined by ``and``/``or``.

    ``null`` counts as absent (Dify sends ``"conditions": null``): no conditions, joined by ``and``.
    """

    # one of the two keys, so that an equality filter ({"law": "…"}) is not read as a condition
    model_config = ConfigDict(
        strict=True, json_schema_extra={"anyOf": [{"required": ["conditions"]}, {"required": ["logical_operator"]}]}
    )

    logical_operator: Literal["and", "or"] | None = "and"
    conditions: list[Condition] | None = Field(None, max_length=MAX_CONDITIONS)

    @model_validator(mode="before")
    @classmethod
    def _names_a_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and not _CONDITION_KEYS & data.keys():
            raise ValueError("a metadata condition has 'conditions' or 'logical_operator'")
        return data

    def to_filter(self) -> MetadataFilter:
        """The core's filter."""
        return MetadataFilter(self.conditions or [], any_of=self.logical_operator == "or")


def _filter_form(value: Any) -> str:
    """Dify's conditions when one of their keys is there, else the field -> value shorthand."""
    if isinstance(value, MetadataCondition) or (isinstance(value, dict) and _CONDITION_KEYS & value.keys()):
        return "~conditions"
    return "~fields"


FilterSpec = Annotated[
    Annotated[MetadataCondition, Tag("~conditions")] | Annotated[Filters, Tag("~fields")], Discriminator(_filter_form)
]
"""A ``/search`` filter in either form (a ``~`` tag is left out of error messages)."""


class ChatMessage(BaseModel):
    """One OpenAI-format chat message."""

    model_config = ConfigDict(strict=True)

    role: Literal["user", "assistant", "system"]
    content: str = Field(max_length=MAX_MESSAGE_CHARS)


class SearchRequest(BaseModel):
    """``POST /search``: a query, a conversation (``messages``), or both.

    A conversation longer than ``MAX_TOTAL_CHARS`` loses its oldest turns (the newest is always kept).
    """

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_SEARCH_INPUT)

    query: str | None = Field(None, max_length=MAX_QUERY_CHARS, description="The question")
    kb: str | None = Field(
        None,
        pattern=BASE_NAME_PATTERN,
        description="The knowledge base to search (default: the path's, else the server's default base)",
    )
    messages: list[ChatMessage] | None = Field(
        None,
        max_length=MAX_MESSAGES,
        description="OpenAI-format conversation; the last user turn is answered",
    )
    session_id: str | None = Field(None, max_length=128, description="Server-side conversation to continue")
    top_k: Whole = Field(5, ge=1, le=MAX_TOP_K)
    mode: SearchMode = HYBRID
    filters: FilterSpec | None = Field(
        None,
        description='Metadata filter applied inside retrieval: {"law": "...", "article_no": [1, 2]} (equality / any of), '
        'or Dify\'s {"logical_operator": "and", "conditions": [{"name": "article_no", "comparison_operator": "≤", '
        '"value": 10}]}',
    )
    rerank: bool = False
    score_threshold: float | None = Field(None, description="Drop results scoring below this (higher = better)")
    expand: Expand = "none"
    neighbors: Whole = Field(1, ge=0, le=MAX_NEIGHBORS)
    group_by: Literal["doc_id"] | None = None
    dialogue_mode: DialogueMode = "auto"

    def to_query(self) -> SearchQuery:
        """The use case's request."""
        filters = self.filters.to_filter() if isinstance(self.filters, MetadataCondition) else self.filters
        options = SearchOptions(
            top_k=self.top_k,
            mode=self.mode,
            filters=filters,
            rerank=self.rerank,
            score_threshold=self.score_threshold,
            expand=self.expand,
            neighbors=self.neighbors,
            group_by=self.group_by,
        )
        messages = [m.model_dump() for m in self.messages or []]
        return SearchQuery(self.query, messages, self.session_id, options, self.dialogue_mode)

    @model_validator(mode="after")
    def _needs_input(self) -> SearchRequest:
        user_turn = any(m.role == "user" and has_text(m.content) for m in self.messages or [])
        if not has_text(self.query) and not user_turn and self.session_id is None:
            raise ValueError("give a non-empty 'query', 'messages' with a user turn, or a 'session_id'")
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
    terms: list[str] = Field(
        default_factory=list, description="The question's terms as BM25 reads them, longest first (to highlight)"
    )


def to_search_response(answer: SearchAnswer) -> SearchResponse:
    """The API body of a search's answer."""
    outcome = answer.outcome
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
        query=answer.question,
        queries=outcome.queries,
        bm25_query=None
        if outcome.lexical is None
        else [WeightedText(text=text, weight=round(weight, 4)) for text, weight in outcome.lexical],
        mode=outcome.mode,
        reranked=outcome.reranked,
        took_ms=outcome.took_ms,
        citations=[CitationOut(**c) for c in outcome.citations],
        session_id=answer.session_id,
        terms=answer.terms,
    )


NonBlank = Annotated[str, StringConstraints(pattern=BLANK)]
EmbedText = Annotated[str, StringConstraints(max_length=MAX_QUERY_CHARS * 4, pattern=BLANK)]
"""A text to embed: an empty one has no embedding."""


class EmbedRequest(BaseModel):
    """``POST /embed``: one ``text`` or a list of ``texts``."""

    model_config = ConfigDict(extra="forbid")

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"oneOf": [{"required": ["text"]}, {"required": ["texts"]}]}
    )

    # absent, never null: the schema's oneOf counts a key that is present
    text: EmbedText = Field(None, validate_default=False)  # type: ignore[assignment]
    texts: list[EmbedText] = Field(None, min_length=1, max_length=MAX_EMBED_TEXTS, validate_default=False)  # type: ignore[assignment]
    input_type: Literal["query", "document"] = "document"

    @model_validator(mode="after")
    def _one_of(self) -> EmbedRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        return self


class EmbedResponse(BaseModel):
    """``POST /embed`` response (``embedding`` too when a single ``text`` was sent)."""

    model: str
    dim: int
    embeddings: list[list[float]]
    embedding: list[float] | None = None


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI ``POST /v1/embeddings``."""

    model_config = ConfigDict(strict=True)

    input: Annotated[
        Annotated[NonBlank, Tag("~text")]
        | Annotated[list[NonBlank], Field(min_length=1, max_length=MAX_EMBED_TEXTS), Tag("~list")],
        Discriminator(lambda value: "~list" if isinstance(value, list) else "~text"),
    ] = Field(description=f"A text or a list of texts (at most {MAX_EMBED_TEXTS}), none empty")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(strict=False, ge=1), BeforeValidator(_whole)] | None = None
    input_type: Literal["query", "document", "passage"] | None = None
    user: str | None = None


class OpenAIEmbeddingResponse(BaseModel):
    """OpenAI embeddings response."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    model: str
    usage: dict[str, int]
