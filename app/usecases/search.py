"""Searching: a question, or a conversation (messages, a stored session) turned into retrieval queries.

The use case behind ``POST /search``, ``zhrag search`` and Dify's ``POST /retrieval``, with the limits of
:mod:`app.usecases.limits`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.usecases.errors import InvalidRequest, NotFound, Unavailable, UseCaseError
from app.usecases.limits import (
    MAX_MESSAGE_CHARS,
    MAX_MESSAGES,
    MAX_NEIGHBORS,
    MAX_QUERY_CHARS,
    MAX_TOP_K,
    MAX_TOTAL_CHARS,
)
from retrieval.dialogue import DialogueMode, user_turns
from retrieval.embedders import EmbedderError
from retrieval.metadata_filter import FilterError, MetadataFilter
from retrieval.searcher import BM25, DENSE, HYBRID, LEG_KINDS, SearchError, SearchOptions, SearchOutcome

if TYPE_CHECKING:
    from app.services import Services
    from app.sessions import SessionStore
    from retrieval.types import Hit

__all__ = [
    "SearchQuery",
    "SearchAnswer",
    "search",
    "scored_search",
    "relevance_scores",
    "DialogueInputError",
    "UnknownConversation",
    "bounded",
]

ROLES = ("user", "assistant", "system")


class DialogueInputError(InvalidRequest):
    """The conversation cannot be searched (e.g. no user turn)."""


class UnknownConversation(NotFound):
    """A ``session_id`` alone names no stored conversation with a user turn (unknown or expired)."""


@dataclass(frozen=True)
class SearchQuery:
    """A search: a ``query``, a conversation (``messages``, a stored ``session_id``), or both.

    Attributes:
        query: The question; with messages, the newest user turn.
        messages: OpenAI-format ``{"role", "content"}`` turns, oldest first.
        session_id: A server-side conversation to continue (stored history + these turns).
        options: What the searcher varies (top_k, mode, filters in the core's filter language, ...).
        dialogue_mode: How a conversation becomes queries (``auto``, ``last``, ``concat``, ``concat-user``).
    """

    query: str | None = None
    messages: Sequence[Mapping[str, str]] = ()
    session_id: str | None = None
    options: SearchOptions = field(default_factory=SearchOptions)
    dialogue_mode: DialogueMode = "auto"


@dataclass(frozen=True)
class SearchAnswer:
    """The searcher's outcome, the question it answered (the last user turn), the session continued, and the
    question's terms as the BM25 leg reads them (longest first: what a reader may highlight in a passage)."""

    outcome: SearchOutcome
    question: str
    session_id: str | None = None
    terms: list[str] = field(default_factory=list)


def question_terms(services: Services, question: str) -> list[str]:
    """The question's BM25 terms of two characters or more, longest first, each once."""
    terms = {t for t in services.analyzer.query_tokens(question) if len(t) >= 2}
    return sorted(terms, key=lambda t: (-len(t), t))


def bounded(messages: list[dict[str, str]], max_chars: int) -> list[dict[str, str]]:
    """The newest messages that fit in ``max_chars`` characters; the last user turn and what follows it are
    always kept, so a long history never leaves nothing to answer."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user" and m["content"].strip()]
    start = users[-1] if users else len(messages) - 1
    total = sum(len(m["content"]) for m in messages[start:])
    while start > 0 and total + len(messages[start - 1]["content"]) <= max_chars:
        start -= 1
        total += len(messages[start]["content"])
    return messages[max(start, 0) :]


def _checked_messages(request: SearchQuery) -> list[dict[str, str]]:
    """The request's turns as plain dicts, the query last; every limit checked."""
    if len(request.messages) > MAX_MESSAGES:
        raise InvalidRequest(f"at most {MAX_MESSAGES} messages, not {len(request.messages)}")
    turns = []
    for i, message in enumerate(request.messages):
        role, content = (message.get("role"), message.get("content")) if isinstance(message, Mapping) else (None, None)
        if role not in ROLES or not isinstance(content, str):
            raise InvalidRequest(f"message {i}: needs a role ({', '.join(ROLES)}) and a string content")
        if len(content) > MAX_MESSAGE_CHARS:
            raise InvalidRequest(f"message {i}: longer than {MAX_MESSAGE_CHARS} characters")
        turns.append({"role": role, "content": content})
    if request.query is not None and len(request.query) > MAX_QUERY_CHARS:
        raise InvalidRequest(f"the query is longer than {MAX_QUERY_CHARS} characters")
    if request.query and request.query.strip():
        turns.append({"role": "user", "content": request.query})
    return turns


def _check_options(options: SearchOptions) -> None:
    if not 1 <= options.top_k <= MAX_TOP_K:
        raise InvalidRequest(f"top_k must be between 1 and {MAX_TOP_K}, not {options.top_k}")
    if not 0 <= options.neighbors <= MAX_NEIGHBORS:
        raise InvalidRequest(f"neighbors must be between 0 and {MAX_NEIGHBORS}, not {options.neighbors}")


def search(services: Services, request: SearchQuery, sessions: SessionStore | None = None) -> SearchAnswer:
    """Search for ``request`` in the knowledge base ``services`` serves.

    A plain query without history is searched as it is. With messages and/or a session, the conversation
    (stored history + new messages + the query as the newest user turn) goes through the dialogue query
    builder.

    Raises:
        InvalidRequest: a limit is passed, nothing to answer, or a filter names an unknown field.
        UnknownConversation: ``session_id`` alone names no stored conversation with a user turn.
        UseCaseError: the index cannot serve the mode (e.g. dense without a model).
        Unavailable: the embedding model failed.
    """
    _check_options(request.options)
    new = _checked_messages(request)
    if request.session_id is not None and sessions is not None:
        conversation = sessions.extend(request.session_id, new)
    else:
        conversation = bounded(new, MAX_TOTAL_CHARS)
    users = user_turns(conversation)
    if not users and request.session_id is not None:
        raise UnknownConversation(f"no conversation {request.session_id!r} with a user turn (unknown or expired)")
    if not users:
        raise DialogueInputError("give a non-empty query, messages with a user turn, or a session_id")
    with _search_errors():
        if len(users) == 1:
            outcome = services.searcher.search(users[-1], request.options)
        else:
            mode = services.searcher.effective_mode(request.options.mode)
            built = services.dialogue.build(conversation, request.dialogue_mode, mode)
            outcome = services.searcher.search(
                built.queries, built.search_options(request.options, services.searcher.weights)
            )
    return SearchAnswer(outcome, users[-1], request.session_id, question_terms(services, users[-1]))


@contextmanager
def _search_errors() -> Iterator[None]:
    """The core's search errors as the use case's kinds."""
    try:
        yield
    except FilterError as exc:
        raise InvalidRequest(str(exc)) from exc
    except SearchError as exc:
        raise UseCaseError(str(exc)) from exc
    except EmbedderError as exc:
        raise Unavailable(str(exc)) from exc


def relevance_scores(outcome: SearchOutcome, rrf_max: float) -> list[float]:
    """Scores in [0, 1]: reranker probability, cosine, RRF over its maximum, or BM25 over the top BM25."""
    scores = [h.score for h in outcome.hits]
    if outcome.reranked or outcome.mode == DENSE:
        return [min(1.0, max(0.0, s)) for s in scores]
    if outcome.mode == BM25:
        top = max(scores, default=1.0) or 1.0
        return [s / top for s in scores]
    return [min(1.0, s / rrf_max) for s in scores]


def scored_search(
    services: Services,
    query: str,
    top_k: int,
    filters: MetadataFilter | Mapping[str, Any] | None = None,
    min_score: float = 0.0,
) -> list[tuple[Hit, float]]:
    """The best hits for a one-shot knowledge query, each with a relevance in [0, 1], those under ``min_score``
    left out: hybrid when the model is loaded (else BM25), reranked when a reranker is. What Dify's external
    knowledge API asks for."""
    options = SearchOptions(
        top_k=top_k,
        mode=HYBRID if services.embedder is not None else BM25,
        filters=filters,
        rerank=services.reranker is not None,
    )
    _check_options(options)
    if not query.strip():
        raise InvalidRequest("the query is empty")
    with _search_errors():
        outcome = services.searcher.search(query, options)
    weights = services.searcher.weights
    rrf_max = sum(weights.get(leg, 1.0) for leg in LEG_KINDS) / (services.searcher.rrf_k_for(options) + 1)
    scored = zip(outcome.hits, relevance_scores(outcome, rrf_max), strict=True)
    return [(hit, score) for hit, score in scored if score >= min_score]
