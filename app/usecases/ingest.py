"""Ingesting paths into an index: the use case behind ``zhrag ingest``."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.usecases.errors import DomainChangeError

if TYPE_CHECKING:  # the use cases load their machinery when called: a command's start-up stays fast
    from app.settings import Settings
    from ingest.chunkers import ChunkSettings
    from ingest.pipeline import IngestSummary

__all__ = ["IngestRequest", "ingest_paths"]


@dataclass(frozen=True)
class IngestRequest:
    """What to ingest into ``settings.index`` and how.

    Attributes:
        paths: Files or directories.
        model_given: The caller named a model (else an existing index keeps adding with its own).
        domain: The documents' domain; ``None``: the index's, else the settings' default.
        chunk: Chunk sizes and chunker (``None``: the defaults).
        store: The vector store of a new index (the manifest's entry).
        prune: Remove indexed documents the run did not see.
        progress: Progress bars on stderr.
    """

    paths: list[Path]
    model_given: bool = False
    domain: str | None = None
    chunk: ChunkSettings | None = None
    store: dict[str, Any] | None = None
    prune: bool = False
    progress: bool = False


def ingest_paths(settings: Settings, request: IngestRequest, cancel: threading.Event | None = None) -> IngestSummary:
    """Ingest ``request.paths`` into the index ``settings`` name, by its rules: an existing index keeps its
    own model unless one is named, and keeps its domain (a different one is refused before any model loads).

    Raises:
        DomainChangeError: the request names another domain than the index's.
        retrieval.index.ZhragIndexError: the index is damaged, locked or built with another model.
    """
    from app.services import build_analyzer, build_embedder, embedder_for_index, index_domain, ingest_limits
    from ingest.pipeline import IngestOptions, ingest
    from ingest.stages import default_workers
    from retrieval.index import IndexNotFoundError, read_manifest

    try:
        manifest = read_manifest(settings.index)
    except IndexNotFoundError:  # a new index (a damaged one is an error, not a new one)
        manifest = None
    recorded = (manifest or {}).get("domain")
    if recorded and request.domain and request.domain != recorded:
        raise DomainChangeError(f"{settings.index} is a {recorded} index; --domain {request.domain} cannot change that")
    # An index keeps its domain; one older than the record takes an explicit domain, else its instruction's.
    domain = recorded or request.domain or index_domain(settings, manifest)
    own_model = manifest is not None and not request.model_given
    embedder = embedder_for_index(manifest, settings) if own_model else build_embedder(settings)
    options = IngestOptions(
        workers=settings.ingest.workers or default_workers(),
        devices=settings.ingest.devices or None,
        max_batch_tokens=settings.ingest.max_batch_tokens,
        cancel=cancel,
        limits=ingest_limits(settings),
        connection=settings.milvus.connection,
    )
    return ingest(
        request.paths,
        settings.index,
        embedder,
        build_analyzer(settings, manifest),
        request.chunk,
        store=request.store,
        progress=request.progress,
        prune=request.prune,
        options=options,
        domain=domain,
    )
