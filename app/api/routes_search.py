"""``POST /search``: single questions and multi-turn conversations."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from app.api.auth import Need
from app.api.deps import SessionsDep, leased
from app.api.errors import ERROR_RESPONSES, JsonRoute
from app.api.schemas import SearchRequest, SearchResponse, to_search_response
from app.usecases.search import search as search_case

__all__ = ["router"]

router = APIRouter(
    tags=["search"], responses=ERROR_RESPONSES, route_class=JsonRoute, dependencies=[Depends(Need("read"))]
)


@router.post("/search", response_model=SearchResponse)
def search(body: SearchRequest, request: Request, sessions: SessionsDep) -> SearchResponse:
    """Top-k passages for a question or the last user turn of a conversation, from the knowledge base of the
    path (``/kbs/{kb}/search``), of ``kb``, or the default one."""
    with leased(request, body.kb) as services:
        answer = search_case(services, body.to_query(), sessions)
    return to_search_response(answer)
