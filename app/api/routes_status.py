"""``GET /status``: what an operator checks at a glance — the served versions, where each leg runs, the
micro-batcher, query latency percentiles and the writes in progress, for the bases the key may see."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from app.api.auth import GrantDep, Need
from app.api.errors import ERROR_RESPONSES, JsonRoute
from app.bases import KnowledgeBases

__all__ = ["router", "StatusOut"]

router = APIRouter(tags=["ops"], responses=ERROR_RESPONSES, route_class=JsonRoute)
QUERY_ROUTES = ("search", "retrieval")
"""Routes whose latency is the query latency (their path ends so)."""


class BaseStatus(BaseModel):
    """A served knowledge base."""

    name: str
    version: str
    store: str = Field(description="Where the dense leg's vectors live (faiss, numpy, milvus)")
    bm25: str | None = Field(description="Where the BM25 leg runs (local: in this process)")
    chunks: int
    model: str
    model_loaded: bool
    reranker: str | None = None
    domain: str | None = Field(None, description="What its documents are about (legal, medical, general)")


class Microbatch(BaseModel):
    """How concurrent queries are embedded."""

    enabled: bool
    max_texts: int = Field(description="Most texts in one micro-batch (ZHRAG_MICROBATCH_SIZE)")
    wait_ms: float = Field(description="Longest a query waits for others (ZHRAG_MICROBATCH_WAIT_MS)")
    passes: int = Field(description="Embedding forward passes since start-up")
    mean_texts: float = Field(description="Texts per forward pass, on average")


class RouteLatency(BaseModel):
    """A query route's latency since start-up."""

    route: str
    requests: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class JobInProgress(BaseModel):
    """A write queued or running."""

    id: str
    kind: str
    kb: str
    state: str
    created: float
    started: float | None = None


class StatusOut(BaseModel):
    """``GET /status``."""

    kbs: list[BaseStatus]
    microbatch: Microbatch
    latency: list[RouteLatency] = Field(description="Query routes (search, Dify's retrieval)")
    jobs: list[JobInProgress] = Field(description="Writes queued or running (an upload's ingest, a deletion)")


def _base_status(bases: KnowledgeBases, name: str) -> BaseStatus | None:
    services = bases.loaded().get(name)
    return None if services is None else BaseStatus(name=name, **services.describe())


@router.get("/status", dependencies=[Depends(Need(None))], response_model=StatusOut, summary="The server at a glance")
def server_status(request: Request, grant: GrantDep) -> StatusOut:
    """The bases this key may see with their served version, store and BM25 location; the micro-batcher;
    query latency percentiles (from the metrics' histogram buckets); writes in progress."""
    state = request.app.state
    visible = set(grant.visible(state.bases.names()))
    serve = state.settings.serve
    latency = state.metrics.latency_summary(lambda route, kb: kb in visible and route.endswith(QUERY_ROUTES))
    jobs = [j for j in state.jobs.unfinished() if j.kb in visible]
    return StatusOut(
        kbs=[b for name in sorted(visible) if (b := _base_status(state.bases, name)) is not None],
        microbatch=Microbatch(
            enabled=serve.microbatch,
            max_texts=serve.microbatch_size,
            wait_ms=serve.microbatch_wait_ms,
            **state.metrics.batch_summary(),
        ),
        latency=[RouteLatency(**row) for row in latency],
        jobs=[JobInProgress(**{k: v for k, v in j.to_dict().items() if k in JobInProgress.model_fields}) for j in jobs],
    )
