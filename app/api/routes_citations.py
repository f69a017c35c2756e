"""``POST /citations/verify``: check every statute citation in a text (e.g. an LLM's answer) against the index."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from app.api.auth import Need
from app.api.deps import ServicesDep
from app.api.errors import ERROR_RESPONSES, JsonRoute
from app.api.schemas import CitationOut
from app.usecases.citations import verify_citations
from app.usecases.limits import MAX_TEXT_CHARS

__all__ = ["router", "VerifyRequest", "VerifiedCitation", "VerifyResponse"]

router = APIRouter(
    tags=["citations"], responses=ERROR_RESPONSES, route_class=JsonRoute, dependencies=[Depends(Need("read"))]
)


class VerifyRequest(BaseModel):
    """A text whose citations to check."""

    model_config = ConfigDict(strict=True)

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


class VerifiedCitation(CitationOut):
    """A citation with the article's canonical text when the index holds it."""

    text: str | None = Field(None, description="The cited article's text (all its parts), when found")
    chunk_id: str | None = Field(None, description="The article's first chunk")
    index_version: str = Field(description="The index version checked against")


class VerifyResponse(BaseModel):
    """Every citation in the text, in order."""

    citations: list[VerifiedCitation]


@router.post("/citations/verify", response_model=VerifyResponse, summary="Check the statute citations in a text")
def verify(body: VerifyRequest, services: ServicesDep) -> VerifyResponse:
    """Every 《law》第N条 in ``text``: found or not (``unknown law``, ``law not in index``, ``no such article``
    …), with the article's text."""
    return VerifyResponse(citations=[VerifiedCitation(**c) for c in verify_citations(services, body.text)])
