"""Which index version the app serves: announce it (log line and metrics), and swap to a newer one."""

from __future__ import annotations

import logging

import anyio
from fastapi import FastAPI

from app.services import Services

__all__ = ["announce", "serve_latest"]

log = logging.getLogger("app.api.main")


def announce(app: FastAPI, services: Services, verb: str) -> None:
    """Log and export what is served."""
    manifest = services.index.manifest
    chunks = manifest.get("counts", {}).get("chunks", 0)
    model = manifest["embedder"]["model"]
    mode = "hybrid" if services.embedder is not None else "bm25 only (no model loaded)"
    settings = services.settings
    log.info(
        "%s index %s version %s: %d chunks, model %s, %s, micro-batching %s, reranker %s",
        verb,
        services.index.root.name,
        services.index.version,
        chunks,
        model,
        mode,
        "on" if settings.microbatch else "off",
        services.reranker.name if services.reranker else "none",
    )
    app.state.metrics.serving(services.index.version, model, chunks)


async def serve_latest(app: FastAPI) -> bool:
    """Swap to the index's newest version if it is not the one served: open it fully off the event loop,
    then replace the reference (requests in flight finish on the old one). Returns whether it swapped.

    Raises:
        Exception: whatever opening the new version raised; the current one keeps serving.
    """
    services = app.state.services
    fresh = await anyio.to_thread.run_sync(services.reopen)
    if fresh is None:
        return False
    await anyio.to_thread.run_sync(fresh.warm_up)
    replaced, app.state.services = app.state.services, fresh
    replaced.retire()  # its index is closed when the requests still using it are done
    announce(app, fresh, "now serving")
    return True
