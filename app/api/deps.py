"""FastAPI dependencies: the knowledge base a request is about, its services, the session store.

A request names its base in the path (``/kbs/{kb}/…``), in its body (``"kb"`` of ``/search``, Dify's
``knowledge_id``) or not at all (the default base, ``ZHRAG_DEFAULT_KB``). Tests replace ``get_services``
through ``app.dependency_overrides``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status

from app.access import BASE_NAME_PATTERN, AccessDenied, unknown_base
from app.bases import BaseNotReady, KnowledgeBases, UnknownBase
from app.services import Services
from app.sessions import SessionStore

__all__ = [
    "get_services",
    "ServicesDep",
    "get_sessions",
    "SessionsDep",
    "base_in_path",
    "resolve_base",
    "leased",
]


def base_in_path(
    request: Request, kb: Annotated[str, Path(pattern=BASE_NAME_PATTERN, description="Knowledge base name")]
) -> str:
    """The base a ``/kbs/{kb}/…`` route is about (checked by :func:`resolve_base`)."""
    request.state.path_kb = kb
    return kb


def resolve_base(request: Request, name: str | None = None) -> str:
    """The base this request is about — ``name``, else the path's, else the default — once the caller's grant
    allows the role its route needs there.

    Raises:
        AccessDenied: 404 for a base that does not exist or that the key may not see (the same answer),
            403 for a role the key lacks there.
    """
    bases: KnowledgeBases = request.app.state.bases
    path_base = getattr(request.state, "path_kb", None)
    if name and path_base and name != path_base:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"kb {name!r} differs from the path's")
    name = name or path_base or bases.default
    if name is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail="this server has several knowledge bases and no default (ZHRAG_DEFAULT_KB): use /kbs/{kb}/… or "
            '"kb" in the body',
        )
    request.app.state.access.check(request.state.grant, request.state.role, name)
    if name not in bases.names():
        raise AccessDenied(404, unknown_base(name), "unknown_base")
    request.state.kb = name  # known and allowed: a metrics label from here on
    return name


@contextmanager
def leased(request: Request, name: str | None = None) -> Iterator[Services]:
    """The services of the request's base (:func:`resolve_base`), held while the block runs; 503 while the base
    is not loaded."""
    bases: KnowledgeBases = request.app.state.bases
    base = resolve_base(request, name)
    try:
        with bases.lease(base) as services:
            yield services
    except UnknownBase as exc:  # deleted meanwhile
        raise AccessDenied(404, unknown_base(base), "unknown_base") from exc
    except BaseNotReady as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"not ready: {exc}") from exc


async def get_services(request: Request) -> AsyncIterator[Services]:
    """The services of the request's base, held for the request (a version swapped out meanwhile is released
    after its last request)."""
    with leased(request) as services:
        yield services


def get_sessions(request: Request) -> SessionStore:
    """The server-side conversation store."""
    return request.app.state.sessions


ServicesDep = Annotated[Services, Depends(get_services)]
SessionsDep = Annotated[SessionStore, Depends(get_sessions)]
