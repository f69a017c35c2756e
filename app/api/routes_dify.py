"""Dify's External Knowledge API: ``POST /retrieval`` so a Dify app can use a zhrag index as its knowledge base."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from app.access import AccessDenied, unknown_base
from app.api.auth import NeedOwnHeader
from app.api.deps import leased
from app.api.errors import BLANK, JsonRoute, readable
from app.api.schemas import MetadataCondition, Whole
from app.bases import KnowledgeBases
from app.services import Services
from app.settings import Settings
from app.usecases.errors import UseCaseError
from app.usecases.limits import MAX_TOP_K
from app.usecases.search import scored_search

__all__ = [
    "router",
    "DifyRoute",
    "knowledge_ids",
    "DifyRetrievalRequest",
    "DifyRetrievalResponse",
    "DifyError",
]

# Dify's suggested error codes.
INVALID_AUTH_FORMAT = 1001
AUTH_FAILED = 1002
KNOWLEDGE_NOT_FOUND = 2001


class RetrievalSetting(BaseModel):
    """Dify ``retrieval_setting``."""

    model_config = ConfigDict(strict=True)

    top_k: Whole = Field(ge=1, le=MAX_TOP_K)
    score_threshold: float = Field(0.0, ge=0.0, le=1.0)


class DifyRetrievalRequest(BaseModel):
    """Dify ``POST /retrieval`` body."""

    model_config = ConfigDict(strict=True)

    knowledge_id: str
    query: str = Field(min_length=1, max_length=2000, pattern=BLANK)
    retrieval_setting: RetrievalSetting
    metadata_condition: MetadataCondition | None = None


class DifyRecord(BaseModel):
    """One retrieved passage, as Dify reads it."""

    content: str
    score: float = Field(description="0..1, higher is more relevant")
    title: str
    metadata: dict[str, Any]


class DifyRetrievalResponse(BaseModel):
    """Dify ``POST /retrieval`` answer."""

    records: list[DifyRecord]


class DifyError(BaseModel):
    """Dify's error shape (1001 bad Authorization header, 1002 wrong key, 2001 unknown knowledge id)."""

    error_code: int
    error_msg: str


_DIFY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": DifyRetrievalResponse},
    **{status: {"model": DifyError} for status in (400, 403, 404, 415, 422)},
}


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error_code": code, "error_msg": message})


def knowledge_ids(settings: Settings, bases: KnowledgeBases) -> dict[str, str]:
    """The ``knowledge_id`` values this server answers, with the base each names: every base by its name, and
    ``zhrag`` and any of ``ZHRAG_KNOWLEDGE_IDS`` for the default base."""
    ids = {name: name for name in bases.names()}
    if bases.default is not None:
        ids.update(
            {alias: bases.default for alias in ("zhrag", *(settings.serve.knowledge_ids or [])) if alias not in ids}
        )
    return ids


_DIFY_DENIED = {"no_key": (INVALID_AUTH_FORMAT, "Invalid Authorization header format. Expected 'Bearer <api-key>'.")}


class DifyRoute(JsonRoute):
    """Every error of a Dify route in Dify's shape ``{error_code, error_msg}``: a body that is not JSON, one
    that does not validate, the wrong content type."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def dify_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return _error(422, 422, readable(exc))
            except AccessDenied as exc:
                if exc.status == 404:
                    return _error(404, KNOWLEDGE_NOT_FOUND, f"The knowledge does not exist: {exc.message}")
                code, message = _DIFY_DENIED.get(exc.reason, (AUTH_FAILED, "Authorization failed"))
                return _error(403, code, message)
            except HTTPException as exc:
                return _error(exc.status_code, exc.status_code, str(exc.detail))
            except UseCaseError as exc:  # Dify's own error shape; a request it cannot serve is its 400
                return _error(400, 400, str(exc))

        return dify_errors


router = APIRouter(tags=["dify"], route_class=DifyRoute, dependencies=[Depends(NeedOwnHeader("read"))])


@router.post("/retrieval", response_model=None, responses=_DIFY_RESPONSES)
def retrieval(body: DifyRetrievalRequest, request: Request) -> JSONResponse:
    """Top-k records for a Dify knowledge query (hybrid search) from the knowledge base ``knowledge_id`` names."""
    base = knowledge_ids(request.app.state.settings, request.app.state.bases).get(body.knowledge_id)
    if base is None:  # the same answer as for a base this key may not see
        raise AccessDenied(404, unknown_base(body.knowledge_id), "unknown_base")
    with leased(request, base) as services:
        return _records(services, body)


def _records(services: Services, body: DifyRetrievalRequest) -> JSONResponse:
    condition = body.metadata_condition
    setting = body.retrieval_setting
    scored = scored_search(
        services, body.query, setting.top_k, condition.to_filter() if condition else None, setting.score_threshold
    )
    records: list[dict[str, Any]] = []
    for hit, score in scored:
        chunk = hit.chunk
        meta = {**chunk.metadata, "doc_id": chunk.doc_id, "chunk_id": chunk.id, "source": chunk.source}
        records.append({"content": chunk.text, "score": round(score, 6), "title": chunk.title, "metadata": meta})
    return JSONResponse(content={"records": records})
