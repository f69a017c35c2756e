"""Knowledge bases: ``GET /kbs`` (those the key may see), ``POST /kbs`` and ``DELETE /kbs/{kb}`` (admin)."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field

from app.access import BASE_NAME_PATTERN, AccessDenied, unknown_base
from app.api.auth import GrantDep, Need
from app.api.errors import ERROR_RESPONSES, JsonRoute
from app.api.serving import announce
from app.bases import BaseExists, KnowledgeBases, UnknownBase
from app.services import index_domain
from retrieval.index import IndexLockedError
from retrieval.prompts import DOMAINS

__all__ = ["router", "KnowledgeBaseOut", "KnowledgeBaseIn", "KnowledgeBaseList"]

router = APIRouter(tags=["knowledge bases"], responses=ERROR_RESPONSES, route_class=JsonRoute)


class KnowledgeBaseOut(BaseModel):
    """One knowledge base as the key sees it."""

    name: str
    role: str = Field(description="What this key may do here: read, write or admin")
    ready: bool
    error: str | None = Field(None, description="Why it could not be loaded")
    model: str | None = None
    domain: str | None = None
    documents: int | None = None
    chunks: int | None = None
    version: str | None = None
    updated_at: str | None = None
    default: bool = Field(False, description="The base the top-level routes use")


class KnowledgeBaseList(BaseModel):
    """``GET /kbs``."""

    kbs: list[KnowledgeBaseOut]


class KnowledgeBaseIn(BaseModel):
    """``POST /kbs``: a new, empty knowledge base."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=BASE_NAME_PATTERN, description="Its name (a directory under the server's root)")
    domain: str | None = Field(None, description=f"One of {', '.join(DOMAINS)} (default: the server's)")
    model: str | None = Field(None, description="Embedding model (default: the default base's, else ZHRAG_MODEL)")


def _describe(bases: KnowledgeBases, name: str, role: str) -> KnowledgeBaseOut:
    loaded = bases.loaded().get(name)
    if loaded is None:
        return KnowledgeBaseOut(name=name, role=role, ready=False, error=bases.errors().get(name))
    manifest = loaded.index.manifest
    counts = manifest.get("counts", {})
    return KnowledgeBaseOut(
        name=name,
        role=role,
        ready=True,
        model=manifest["embedder"]["model"],
        domain=index_domain(loaded.settings, manifest),
        documents=counts.get("documents"),
        chunks=counts.get("chunks"),
        version=loaded.index.version,
        updated_at=manifest.get("updated_at"),
        default=name == bases.default,
    )


@router.get("/kbs", dependencies=[Depends(Need(None))], response_model=KnowledgeBaseList)
def list_bases(request: Request, grant: GrantDep) -> KnowledgeBaseList:
    """The knowledge bases this key may see, with model, domain, documents, chunks and version."""
    bases: KnowledgeBases = request.app.state.bases
    names = grant.visible(bases.names())
    return KnowledgeBaseList(kbs=[_describe(bases, n, grant.role_on(n) or "read") for n in names])


@router.post(
    "/kbs",
    dependencies=[Depends(Need("admin"))],
    response_model=KnowledgeBaseOut,
    status_code=status.HTTP_201_CREATED,
    summary="Create an empty knowledge base",
)
async def create_base(body: KnowledgeBaseIn, request: Request) -> KnowledgeBaseOut:
    """An empty base under the server's root, served at once (409 if it exists; admin keys only)."""
    if body.domain is not None and body.domain not in DOMAINS:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"domain must be one of {', '.join(DOMAINS)}")
    bases: KnowledgeBases = request.app.state.bases
    try:
        created = await anyio.to_thread.run_sync(bases.create, body.name, body.model, body.domain)
    except BaseExists as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    announce(request.app, body.name, created, "now serving new")
    return _describe(bases, body.name, "admin")


@router.delete(
    "/kbs/{kb}",
    dependencies=[Depends(Need("admin"))],
    response_model=KnowledgeBaseOut,
    summary="Delete a knowledge base and its index",
)
async def delete_base(kb: Annotated[str, Path(pattern=BASE_NAME_PATTERN)], request: Request) -> KnowledgeBaseOut:
    """Stop serving the base and delete its directory (409 while a write to it runs; admin keys only)."""
    bases: KnowledgeBases = request.app.state.bases
    if kb not in bases.names():
        raise AccessDenied(404, unknown_base(kb), "unknown_base")
    gone = _describe(bases, kb, "admin")
    try:
        await anyio.to_thread.run_sync(bases.remove, kb)
    except UnknownBase as exc:
        raise AccessDenied(404, unknown_base(kb), "unknown_base") from exc
    except IndexLockedError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    request.app.state.metrics.forget(kb)
    return gone
