"""Turn a ``/search`` request (query, messages, session) into retrieval queries and run them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.services import Services
from app.sessions import SessionStore
from retrieval.dialogue import user_turns
from retrieval.errors import UserError
from retrieval.searcher import SearchOptions, SearchOutcome

if TYPE_CHECKING:
    from app.api.schemas import SearchRequest

__all__ = ["run_search", "DialogueInputError", "UnknownConversation", "options_from", "bounded"]


class DialogueInputError(UserError, ValueError):
    """The conversation cannot be searched (e.g. no user turn)."""


class UnknownConversation(DialogueInputError):
    """A ``session_id`` alone names no stored conversation with a user turn (unknown or expired)."""


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


def options_from(body: SearchRequest) -> SearchOptions:
    """Searcher options from the request body."""
    from app.api.schemas import MetadataCondition  # runtime import: app.api imports this module

    return SearchOptions(
        top_k=body.top_k,
        mode=body.mode,
        filters=body.filters.to_filter() if isinstance(body.filters, MetadataCondition) else body.filters,
        rerank=body.rerank,
        score_threshold=body.score_threshold,
        expand=body.expand,
        neighbors=body.neighbors,
        group_by=body.group_by,
    )


def run_search(
    services: Services, body: SearchRequest, sessions: SessionStore | None = None
) -> tuple[SearchOutcome, str, str | None]:
    """Search for ``body``; returns (outcome, the user's question, session id).

    A plain ``query`` without history is searched as it is. With ``messages`` and/or a ``session_id``,
    the conversation (stored history + new messages + ``query`` as the newest user turn) goes through
    the dialogue query builder.
    """
    from app.api.schemas import MAX_TOTAL_CHARS, has_text

    new = [m.model_dump() for m in body.messages or []]
    if has_text(body.query):
        new.append({"role": "user", "content": body.query})
    if body.session_id is not None and sessions is not None:
        conversation = sessions.extend(body.session_id, new)
    else:
        conversation = bounded(new, MAX_TOTAL_CHARS)
    options = options_from(body)
    users = user_turns(conversation)
    if not users and body.session_id is not None:
        raise UnknownConversation(f"no conversation {body.session_id!r} with a user turn (unknown or expired)")
    if not users:
        raise DialogueInputError("the conversation has no user turn to answer")
    question = users[-1]
    if len(users) == 1:
        return services.searcher.search(question, options), question, body.session_id
    built = services.dialogue.build(conversation, body.dialogue_mode, services.searcher.effective_mode(body.mode))
    return (
        services.searcher.search(built.queries, built.search_options(options, services.searcher.weights)),
        question,
        body.session_id,
    )
