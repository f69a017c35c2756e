"""Embedding endpoints that reuse the loaded model: ``POST /embed`` and OpenAI ``POST /v1/embeddings``."""

from __future__ import annotations

import asyncio
import base64
import contextlib

import anyio
import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request, status

from app.api.auth import Need
from app.api.deps import ServicesDep
from app.api.errors import ERROR_RESPONSES, JsonRoute
from app.api.limits import BulkSlots, caller
from app.api.schemas import EmbedRequest, EmbedResponse, OpenAIEmbeddingRequest, OpenAIEmbeddingResponse
from app.services import Services
from retrieval.embedders import EmbedderError, truncate_dim
from retrieval.embedders.microbatch import Lane, batcher_of
from retrieval.protocols import Embedder

__all__ = ["router"]

router = APIRouter(
    tags=["embeddings"], responses=ERROR_RESPONSES, route_class=JsonRoute, dependencies=[Depends(Need("read"))]
)
"""The model of the default knowledge base (``ZHRAG_DEFAULT_KB``)."""
QUERY_TYPES = ("query",)
EMBED_PIECE = 64
"""Texts queued at a time by one embedding request (the unit in which it can be cancelled)."""
INTERACTIVE_TEXTS = 8
"""A query-side request with at most this many texts goes ahead of bulk work, like a search; larger ones are bulk."""


def _embedder(services: Services) -> Embedder:
    if services.embedder is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="no embedding model loaded")
    return services.embedder


async def _piece(embedder: Embedder, texts: list[str], as_query: bool, lane: Lane) -> np.ndarray:
    """One piece: queued on the micro-batcher in its lane without holding a thread, else computed in a
    worker thread."""
    batcher = batcher_of(embedder)
    if batcher is not None:
        return await asyncio.wrap_future(batcher.submit(texts, "query" if as_query else "document", lane))
    return await anyio.to_thread.run_sync(embedder.embed_queries if as_query else embedder.embed_documents, texts)


async def _embed(
    embedder: Embedder, texts: list[str], as_query: bool, slots: BulkSlots | None = None, who: str = ""
) -> np.ndarray:
    """Embed in pieces of ``EMBED_PIECE`` texts: a request that times out or whose client goes away is
    cancelled between pieces (a queued piece is dropped), not computed to the end. A few query texts go
    ahead like a search; anything larger is bulk work, at most ``max_bulk_per_key`` requests per key."""
    lane: Lane = "interactive" if as_query and len(texts) <= INTERACTIVE_TEXTS else "bulk"
    parts = []
    try:
        with slots.hold(who) if slots is not None and lane == "bulk" else contextlib.nullcontext():
            for start in range(0, len(texts), EMBED_PIECE):
                parts.append(await _piece(embedder, texts[start : start + EMBED_PIECE], as_query, lane))
    except EmbedderError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from exc
    return np.concatenate(parts) if parts else np.zeros((0, embedder.dim), dtype=np.float32)


@router.post("/embed", response_model=EmbedResponse, response_model_exclude_none=True)
async def embed(body: EmbedRequest, services: ServicesDep, request: Request) -> EmbedResponse:
    """Embed ``text`` or ``texts``; ``input_type: "query"`` adds the query instruction."""
    embedder = _embedder(services)
    texts = [body.text] if body.text is not None else list(body.texts or [])
    as_query = body.input_type in QUERY_TYPES
    vectors = await _embed(embedder, texts, as_query, request.app.state.bulk_slots, caller(request))
    rows = vectors.tolist()
    return EmbedResponse(
        model=embedder.name,
        dim=int(vectors.shape[1]),
        embeddings=rows,
        embedding=rows[0] if body.text is not None else None,
    )


@router.post("/v1/embeddings", response_model=OpenAIEmbeddingResponse)
async def openai_embeddings(
    body: OpenAIEmbeddingRequest, services: ServicesDep, request: Request
) -> OpenAIEmbeddingResponse:
    """OpenAI-compatible embeddings. Inputs are documents unless ``input_type`` is ``query`` or the
    requested model name contains ``query``; ``dimensions`` truncates (Matryoshka) and re-normalises."""
    embedder = _embedder(services)
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    as_query = body.input_type == "query" or "query" in (body.model or "").lower()
    vectors = await _embed(embedder, texts, as_query, request.app.state.bulk_slots, caller(request))
    if body.dimensions is not None:
        if body.dimensions > vectors.shape[1]:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=f"dimensions {body.dimensions} exceeds the model's {vectors.shape[1]}",
            )
        vectors = truncate_dim(vectors, body.dimensions)
    data = []
    for i, vec in enumerate(vectors):
        value: list[float] | str = (
            base64.b64encode(vec.astype("<f4").tobytes()).decode() if body.encoding_format == "base64" else vec.tolist()
        )
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = int(sum(await anyio.to_thread.run_sync(embedder.count_tokens, texts)))
    return OpenAIEmbeddingResponse(
        data=data, model=body.model or embedder.name, usage={"prompt_tokens": tokens, "total_tokens": tokens}
    )


QUERY_MODEL = "zhrag-query"
DOCUMENT_MODEL = "zhrag"


@router.get("/v1/models")
def openai_models(services: ServicesDep) -> dict[str, object]:
    """OpenAI-compatible model list: ``zhrag`` embeds documents, ``zhrag-query`` queries (with the instruction)."""
    _embedder(services)
    owner = "zhrag"
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": owner} for name in (DOCUMENT_MODEL, QUERY_MODEL)
        ],
    }
