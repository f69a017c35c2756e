"""The FastAPI application: ``/search``, ``/embed``, ``/v1/embeddings``, Dify's ``/retrieval``, health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi_offline import FastAPIOffline

from app import __version__
from app.access import Access, RateLimiter
from app.api import (
    routes_citations,
    routes_console,
    routes_dify,
    routes_documents,
    routes_embed,
    routes_kbs,
    routes_search,
    routes_status,
)
from app.api.auth import Need
from app.api.deps import base_in_path
from app.api.errors import ERROR_RESPONSES, install_error_handlers
from app.api.limits import BodyLimit, BulkSlots, Deadline, upload_paths
from app.api.observability import Metrics, RequestContext, metrics_endpoint
from app.api.serving import announce, freeze_loaded, serve_latest, swap_to_latest
from app.bases import KnowledgeBases
from app.jobs import Job, JobQueue
from app.sessions import SessionStore
from app.settings import Settings
from retrieval.index import IndexLockedError, current_version, merge_segments, remove_dead_staging

__all__ = ["create_app", "BASE_PREFIXES"]

BASE_PREFIXES = ("", "/kbs/{kb}")
"""Where the per-base routes are served: for the default base, and for the base the path names."""

log = logging.getLogger(__name__)


async def _follow_index(app: FastAPI, interval: float) -> None:
    """Serve each newly published version of every base (:func:`serve_latest`), and the bases that appeared
    under the root or left it; a version that cannot be opened is logged once and the current one keeps
    serving."""
    failed: dict[str, str] = {}
    while True:
        await asyncio.sleep(interval)
        bases: KnowledgeBases = app.state.bases
        added, removed = await asyncio.to_thread(bases.discover)
        for name in removed:
            app.state.metrics.forget(name)
            log.info("knowledge base %s is gone from %s: no longer served", name, bases.root)
        for name in added:
            announce(app, name, bases.services(name), "now serving new")
        for name, services in bases.loaded().items():
            try:
                await serve_latest(app, name)
            except Exception as exc:  # noqa: BLE001 - keep serving what works
                version = current_version(services.settings.index) or ""
                if failed.get(name) != version:
                    log.error(
                        "could not open %s version %s, still serving %s: %s", name, version, services.index.version, exc
                    )
                    failed[name] = version
                continue
            failed.pop(name, None)


def _load(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """Open every knowledge base into ``app.state.bases`` (one that fails is reported by ``/ready`` and
    ``/kbs``), removing what dead writers left in each first. A function of its own: a local in the lifespan
    would keep the first versions alive after every swap."""
    bases = KnowledgeBases.from_settings(settings, on_embed_batch=metrics.batch_size.observe)
    for name in bases.names():
        removed = remove_dead_staging(bases.path(name))
        if removed:
            log.warning("removed what dead writers left in %s: %s", name, ", ".join(removed))
    bases.load_all()
    app.state.bases = bases
    if app.state.access.anonymous_why:
        log.warning("%s", app.state.access.anonymous_why)
    freeze_loaded()
    for name, services in bases.loaded().items():
        announce(app, name, services, "serving")
    if not bases.names():
        log.warning("no knowledge base under %s yet: create one (POST /kbs, zhrag kb create)", settings.root)


def _published(app: FastAPI, job: Job) -> None:
    swap_to_latest(app, job.kb)


def _merge_step(app: FastAPI, kb: str) -> bool:
    """One merge of a base's segments, as its tiered policy says, served at once; whether one was made.
    Runs between write jobs, so searches never wait for it."""
    try:
        merged = merge_segments(app.state.bases.path(kb), limit=1, connection=app.state.settings.milvus.connection)
    except IndexLockedError:  # a command-line writer holds it: it merges after itself
        return False
    if merged:
        log.info("merged segments of knowledge base %r into version %s", kb, merged[0])
        swap_to_latest(app, kb)
    return bool(merged)


def create_app(settings: Settings | None = None, load: bool = True) -> FastAPI:
    """Build the app; the knowledge bases and their models are loaded in the lifespan.

    Args:
        settings: Settings (default: from the environment).
        load: Load the bases at start-up; tests pass ``False`` and set ``app.state.bases`` themselves
            (``KnowledgeBases.serving``).

    Raises:
        KeyFileError: ``ZHRAG_KEYS_FILE`` cannot be used (naming the line).
    """
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher = None
        if load:
            _load(app, settings, metrics)
            if settings.serve.reload_interval > 0:
                watcher = asyncio.create_task(_follow_index(app, settings.serve.reload_interval))
        yield
        await asyncio.to_thread(app.state.jobs.close)  # a running write sees its cancel; nothing half-published
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if load:
            app.state.bases.close()

    # FastAPIOffline serves Swagger UI and ReDoc from the package instead of a CDN: /docs works air-gapped.
    app = FastAPIOffline(
        title="zhrag",
        version=__version__,
        description="Chinese RAG retrieval: top-k passages for an upstream LLM (legal and medical documents).",
        lifespan=lifespan,
    )
    _set_state(app, settings, metrics)
    install_error_handlers(app)
    _add_middleware(app, settings, metrics)
    _add_routes(app)
    app.openapi = partial(_openapi, app)
    return app


def _set_state(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """What the routes share: settings, metrics, sessions, write jobs, keys, limits, the bases (none yet)."""
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.sessions = SessionStore()
    app.state.bulk_slots = BulkSlots(settings.serve.max_bulk_per_key)
    app.state.jobs = JobQueue(on_published=partial(_published, app), maintain=partial(_merge_step, app))
    app.state.access = Access.configure(
        settings.auth.keys,
        settings.auth.admin_keys,
        settings.auth.keys_file,
        settings.serve.host,
        settings.auth.anonymous_role,
    )
    app.state.rate_limiter = RateLimiter(settings.serve.rate_limit)
    app.state.bases = KnowledgeBases(settings, {})  # none until the lifespan loads them


def _add_middleware(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """Body limits (inside), deadlines, request ids and metrics, CORS (outermost: a preflight carries no key)."""
    uploads = upload_paths(routes_documents.router, BASE_PREFIXES)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.serve.max_body_bytes,
        uploads=settings.serve.max_upload_bytes,
        upload_paths=uploads,
    )
    app.add_middleware(Deadline, timeout_s=settings.serve.request_timeout_s)
    app.add_middleware(RequestContext, metrics=metrics)  # every answer gets an id and is counted
    if settings.serve.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.serve.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
        )


_METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Text format"},
    **{
        code: {
            "description": ERROR_RESPONSES[code]["description"],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
        }
        for code in (401, 403, 429)
    },
}


def _add_routes(app: FastAPI) -> None:
    """The probes, metrics, the bases, every per-base route twice (the default base; ``/kbs/{kb}``), the
    model-level embedding routes and Dify's."""
    app.add_api_route(
        "/metrics",
        metrics_endpoint,
        methods=["GET"],
        tags=["ops"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses=_METRICS_RESPONSES,
        dependencies=[Depends(Need(None))],
    )

    @app.get("/health", tags=["ops"])
    def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"], responses={503: {"description": "A knowledge base is not loaded (yet)"}})
    def ready(request: Request) -> JSONResponse:
        """Readiness: every knowledge base (and its model, unless disabled) is loaded; the default base's
        version, model and store."""
        return _readiness(request.app.state.bases)

    app.include_router(routes_kbs.router)
    for router in (routes_search.router, routes_documents.router, routes_citations.router):
        app.include_router(router)  # the default base
        app.include_router(router, prefix=BASE_PREFIXES[1], dependencies=[Depends(base_in_path)])
    app.include_router(routes_embed.router)
    app.include_router(routes_dify.router)
    app.include_router(routes_status.router)
    app.include_router(routes_console.router)


def _readiness(bases: KnowledgeBases) -> JSONResponse:
    failed = bases.errors()
    if failed or not bases.loaded():
        reason = "; ".join(f"{name}: {why}" for name, why in failed.items()) or "no knowledge base loaded"
        return JSONResponse(status_code=503, content={"status": "not ready", "reason": reason})
    body: dict[str, Any] = {"status": "ready", "kbs": len(bases.loaded())}
    services = bases.any_services()
    if services is not None:
        body |= {"index": services.index.root.name, **services.describe()}
    return JSONResponse(content=body)


def _describe_this_server(app: FastAPI, components: dict[str, Any]) -> None:
    """What this server's configuration decides, said in its schema: no reranker, the model's dimension. (Not
    the bases' names: the schema is public.)"""
    if not app.state.settings.search.reranker:
        rerank = components["SearchRequest"]["properties"]["rerank"]
        rerank.update(const=False, description="Always false here: the server has no reranker (ZHRAG_RERANKER)")
    services = app.state.bases.any_services()
    if services is not None:
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
