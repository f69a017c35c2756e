"""FastAPI dependencies: the loaded services, replaced in tests via ``app.dependency_overrides``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from app.services import Services
from app.sessions import SessionStore

__all__ = ["get_services", "ServicesDep", "get_sessions", "SessionsDep"]


async def get_services(request: Request) -> AsyncIterator[Services]:
    """The services built in the lifespan, held for the request (a version swapped out meanwhile is released
    after its last request); 503 while they are not loaded."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        reason = getattr(request.app.state, "load_error", None) or "index not loaded"
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"not ready: {reason}")
    services.acquire()
    try:
        yield services
    finally:
        services.release()


def get_sessions(request: Request) -> SessionStore:
    """The server-side conversation store."""
    return request.app.state.sessions


ServicesDep = Annotated[Services, Depends(get_services)]
SessionsDep = Annotated[SessionStore, Depends(get_sessions)]
