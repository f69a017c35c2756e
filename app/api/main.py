"""The FastAPI application: ``/search``, ``/embed``, ``/v1/embeddings``, Dify's ``/retrieval``, health."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app import __version__
from app.api import routes_dify, routes_embed, routes_search
from app.services import build_services
from app.sessions import SessionStore
from app.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def _readable(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts)


def _plain(error: dict) -> dict:
    """A validation error without its (non-JSON) exception context."""
    return {k: v for k, v in error.items() if k not in ("ctx", "url")}


def create_app(settings: Settings | None = None, load: bool = True) -> FastAPI:
    """Build the app; models and the index are loaded in the lifespan (skipped with ``load=False``).

    Args:
        settings: Settings (default: from the environment).
        load: Load services at start-up; tests pass ``False`` and use ``dependency_overrides``.
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = None
        app.state.load_error = None
        if load:
            try:
                services = build_services(settings, serving=True)
                services.warm_up()
                app.state.services = services
                log.info("serving index %s", settings.index)
            except Exception as exc:  # noqa: BLE001 - reported by /ready instead of crashing the server
                app.state.load_error = f"{type(exc).__name__}: {exc}"
                log.error("could not load the index %s: %s", settings.index, exc)
        yield
        if app.state.services is not None:
            app.state.services.close()

    app = FastAPI(
        title="zhrag",
        version=__version__,
        description="Chinese RAG retrieval: top-k passages for an upstream LLM (legal and medical documents).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessions = SessionStore()
    app.state.services = None
    app.state.load_error = None

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            content={"message": _readable(exc), "detail": [_plain(e) for e in exc.errors()]},
        )

    @app.get("/health", tags=["ops"])
    def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"])
    def ready(request: Request) -> JSONResponse:
        """Readiness: the index (and the model, unless disabled) are loaded."""
        services = request.app.state.services
        if services is None:
            reason = request.app.state.load_error or "index not loaded"
            return JSONResponse(status_code=503, content={"status": "not ready", "reason": reason})
        manifest = services.index.manifest
        return JSONResponse(
            content={
                "status": "ready",
                "index": str(services.index.root),
                "model": manifest["embedder"]["model"],
                "model_loaded": services.embedder is not None,
                "reranker": services.reranker.name if services.reranker else None,
                "chunks": manifest.get("counts", {}).get("chunks", 0),
            }
        )

    app.include_router(routes_search.router)
    app.include_router(routes_embed.router)
    app.include_router(routes_dify.router)
    return app
