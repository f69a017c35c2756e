"""The FastAPI application: ``/search``, ``/embed``, ``/v1/embeddings``, Dify's ``/retrieval``, health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi_offline import FastAPIOffline

from app import __version__
from app.api import routes_citations, routes_dify, routes_documents, routes_embed, routes_search
from app.api.auth import RequireKey
from app.api.errors import install_error_handlers
from app.api.limits import BodyLimit, BulkSlots, Deadline
from app.api.observability import Metrics, RequestContext, metrics_endpoint
from app.api.serving import announce, freeze_loaded, serve_latest, swap_to_latest
from app.jobs import JobQueue
from app.services import build_services, index_domain
from app.sessions import SessionStore
from app.settings import Settings
from retrieval.index import current_version, remove_dead_staging

__all__ = ["create_app"]

log = logging.getLogger(__name__)


async def _follow_index(app: FastAPI, interval: float) -> None:
    """Serve each newly published index version (:func:`serve_latest`); a version that cannot be opened
    is logged once and the current one keeps serving."""
    failed: str | None = None
    while True:
        await asyncio.sleep(interval)
        services = app.state.services
        try:
            await serve_latest(app)
        except Exception as exc:  # noqa: BLE001 - keep serving what works
            version = current_version(services.settings.index)
            if version != failed:
                log.error("could not open index version %s, still serving %s: %s", version, services.index.version, exc)
                failed = version
            continue
        failed = None


def _load(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """Load the index and its models into ``app.state`` (a failure is reported by ``/ready``). A function of its
    own: a local in the lifespan would keep the first version alive after every swap."""
    try:
        services = build_services(settings, serving=True, on_embed_batch=metrics.batch_size.observe)
        services.warm_up()
        app.state.services = services
        freeze_loaded()
        announce(app, services, "serving")
    except Exception as exc:  # noqa: BLE001 - reported by /ready instead of crashing the server
        app.state.load_error = f"{type(exc).__name__}: {exc}"
        log.error("could not load the index %s: %s", settings.index, exc)


def create_app(settings: Settings | None = None, load: bool = True) -> FastAPI:
    """Build the app; models and the index are loaded in the lifespan (skipped with ``load=False``).

    Args:
        settings: Settings (default: from the environment).
        load: Load services at start-up; tests pass ``False`` and use ``dependency_overrides``.
    """
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher = None
        if load:
            removed = remove_dead_staging(settings.index)
            if removed:
                log.warning("removed what dead writers left in %s: %s", settings.index, ", ".join(removed))
            _load(app, settings, metrics)
            if settings.reload_interval > 0 and app.state.services is not None:
                watcher = asyncio.create_task(_follow_index(app, settings.reload_interval))
        yield
        await asyncio.to_thread(app.state.jobs.close)  # a running write sees its cancel; nothing half-published
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if app.state.services is not None:
            app.state.services.close()

    # FastAPIOffline serves Swagger UI and ReDoc from the package instead of a CDN: /docs works air-gapped.
    app = FastAPIOffline(
        title="zhrag",
        version=__version__,
        description="Chinese RAG retrieval: top-k passages for an upstream LLM (legal and medical documents).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.sessions = SessionStore()
    app.state.bulk_slots = BulkSlots(settings.max_bulk_per_key)
    app.state.jobs = JobQueue(on_published=partial(swap_to_latest, app))
    app.state.services = None
    app.state.load_error = None

    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, uploads=settings.max_upload_bytes)
    app.add_middleware(RequireKey, keys=settings.keys, admin_keys=settings.admin_keys)
    app.add_middleware(Deadline, timeout_s=settings.request_timeout_s)
    app.add_middleware(RequestContext, metrics=metrics)  # every answer gets an id and is counted
    if settings.cors_origins:  # outermost: a browser's preflight carries no key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
        )
    app.add_api_route(
        "/metrics",
        metrics_endpoint,
        methods=["GET"],
        tags=["ops"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Text format"}},
    )

    @app.get("/health", tags=["ops"])
    def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"], responses={503: {"description": "The index or the model is not loaded (yet)"}})
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
                "index": services.index.root.name,
                "version": services.index.version,
                "model": manifest["embedder"]["model"],
                "model_loaded": services.embedder is not None,
                "reranker": services.reranker.name if services.reranker else None,
                "chunks": manifest.get("counts", {}).get("chunks", 0),
                "store": manifest["store"]["backend"],
                "bm25": getattr(services.index.bm25, "location", None),
                "domain": index_domain(services.settings, manifest),
            }
        )

    app.include_router(routes_search.router)
    app.include_router(routes_embed.router)
    app.include_router(routes_dify.router)
    app.include_router(routes_documents.router)
    app.include_router(routes_citations.router)
    app.openapi = partial(_openapi, app)
    return app


def _describe_this_server(app: FastAPI, components: dict[str, Any]) -> None:
    """What this server's configuration decides, said in its schema: no reranker, the model's dimension."""
    if not app.state.settings.reranker:
        rerank = components["SearchRequest"]["properties"]["rerank"]
        rerank.update(const=False, description="Always false here: the server has no reranker (ZHRAG_RERANKER)")
    services = app.state.services
    if services is not None:
        known = routes_dify.knowledge_ids(app.state.settings, services)
        components["DifyRetrievalRequest"]["properties"]["knowledge_id"]["examples"] = sorted(known)
        dim = services.index.manifest["embedder"]["dim"]
        dimensions = components["OpenAIEmbeddingRequest"]["properties"]["dimensions"]["anyOf"][0]
        dimensions.update(maximum=dim, description=f"At most the model's {dim}")


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the models routes name in ``openapi_extra`` (their references then resolve)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes, tags=app.openapi_tags
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(routes_documents.COMPONENTS)
        _describe_this_server(app, components)
        app.openapi_schema = schema
    return app.openapi_schema
