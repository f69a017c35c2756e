"""``POST /search``: single questions and multi-turn conversations."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, status

from app.api.auth import Need
from app.api.deps import SessionsDep, leased
from app.api.errors import ERROR_RESPONSES, JsonRoute
from app.api.schemas import SearchRequest, SearchResponse, to_search_response
from app.dialogue_search import DialogueInputError, UnknownConversation, run_search
from retrieval.docstore import FilterError
from retrieval.embedders import EmbedderError
from retrieval.searcher import SearchError

__all__ = ["router"]

router = APIRouter(
    tags=["search"], responses=ERROR_RESPONSES, route_class=JsonRoute, dependencies=[Depends(Need("read"))]
)


@router.post("/search", response_model=SearchResponse)
def search(body: SearchRequest, request: Request, sessions: SessionsDep) -> SearchResponse:
    """Top-k passages for a question or the last user turn of a conversation, from the knowledge base of the
    path (``/kbs/{kb}/search``), of ``kb``, or the default one."""
    try:
        with leased(request, body.kb) as services:
            outcome, query, session_id = run_search(services, body, sessions)
    except UnknownConversation as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    except (FilterError, DialogueInputError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    except SearchError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from exc
    except EmbedderError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from exc
    return to_search_response(outcome, query, session_id)
