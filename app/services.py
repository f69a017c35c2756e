"""Build the objects a CLI command or the API needs from settings and an index manifest."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from app.settings import Settings
from ingest.limits import FileLimits
from retrieval.citations import CitationIndex
from retrieval.dialogue import DialogueQueryBuilder, turn_weights
from retrieval.embedders import create_embedder
from retrieval.embedders.cache import CachedEmbedder
from retrieval.embedders.microbatch import MicroBatcher, QueryCache
from retrieval.embedders.sentence_transformers import SentenceTransformerEmbedder
from retrieval.index import Index, check_embedder, current_version, read_manifest
from retrieval.prompts import domain_of
from retrieval.protocols import Embedder, Reranker
from retrieval.rerankers import create_reranker
from retrieval.rewriter import CachedRewriter, LLMQueryRewriter
from retrieval.searcher import BM25, DENSE, Searcher, SearchOptions
from retrieval.text import Analyzer

__all__ = [
    "Services",
    "build_embedder",
    "embedder_for_index",
    "build_services",
    "build_analyzer",
    "query_synonyms",
    "index_domain",
    "build_dialogue",
    "serving_embedder",
    "model_worker",
    "query_cache",
    "build_searcher",
    "ingest_limits",
]

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything loaded for serving one index."""

    settings: Settings
    index: Index
    embedder: Embedder | None
    analyzer: Analyzer
    searcher: Searcher
    reranker: Reranker | None
    dialogue: DialogueQueryBuilder
    # Requests using these services; a version swapped out is released when its last request ends.
    _leases: int = field(default=0, init=False, repr=False)
    _retired: bool = field(default=False, init=False, repr=False)
    _lease_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def acquire(self) -> Services:
        """Count a request using these services (pair with :meth:`release`)."""
        with self._lease_lock:
            self._leases += 1
        return self

    def release(self) -> None:
        """A request is done; the index of retired services is closed after their last request."""
        with self._lease_lock:
            self._leases -= 1
            close = self._retired and self._leases == 0
        if close:
            self._close_index()

    def retire(self) -> None:
        """These services were swapped for a newer version: release the index (the model is shared with the
        new services and stays) as soon as no request uses it. Calling it again does nothing."""
        with self._lease_lock:
            close = not self._retired and self._leases == 0
            self._retired = True
        if close:
            self._close_index()

    def _close_index(self) -> None:
        try:
            self.index.close()
        except Exception as exc:  # noqa: BLE001 - releasing an old version must not break serving
            log.warning("could not release index version %s: %s", self.index.version, exc)

    def describe(self) -> dict[str, Any]:
        """What is served: the version, model (and whether it is loaded), reranker, chunks, vector store, where
        BM25 runs and the domain (``/ready`` and ``/status``)."""
        manifest = self.index.manifest
        return {
            "version": self.index.version,
            "model": manifest["embedder"]["model"],
            "model_loaded": self.embedder is not None,
            "reranker": self.reranker.name if self.reranker else None,
            "chunks": manifest.get("counts", {}).get("chunks", 0),
            "store": manifest["store"]["backend"],
            "bm25": self.index.bm25.location if self.index.bm25 is not None else None,
            "domain": index_domain(self.settings, manifest),
        }

    def warm_up(self) -> None:
        """Run one query through each leg so the first request does not pay for lazy initialisation."""
        self.searcher.search("预热", SearchOptions(top_k=1, mode=BM25))
        if self.embedder is not None:
            self.embedder.embed_queries(["预热"])

    def reopen(self) -> Services | None:
        """The same services over the index's newest version, or ``None`` when that is the one served.

        The new version is opened fully before anything is swapped, so a caller can replace its reference
        and let requests in flight finish on this one.

        Raises:
            IndexMismatchError: the new version was built with another model (that needs a restart).
        """
        if current_version(self.settings.index) in (None, self.index.version):
            return None
        index = Index(self.settings.index, self.settings.milvus.connection)
        try:
            model = self.index.manifest["embedder"]["model"]
            check_embedder(index.manifest, model, self.embedder.dim if self.embedder is not None else None)
            analyzer, dialogue = self.analyzer, self.dialogue
            domain = index_domain(self.settings, index.manifest)
            if index.manifest.get("analyzer") != self.index.manifest.get("analyzer"):
                analyzer = build_analyzer(self.settings, index.manifest)
            if analyzer is not self.analyzer or domain != index_domain(self.settings, self.index.manifest):
                dialogue = build_dialogue(self.settings, analyzer, self.embedder, domain)
        except BaseException:
            index.close()
            raise
        searcher = build_searcher(self.settings, index, self.embedder, analyzer, self.reranker)
        return replace(self, index=index, analyzer=analyzer, searcher=searcher, dialogue=dialogue)

    def close(self) -> None:
        """Stop the embedding worker and release the index."""
        if self.embedder is not None:
            self.embedder.close()
        self.index.close()


def ingest_limits(settings: Settings) -> FileLimits:
    """Per-file ingest limits from ``ZHRAG_INGEST_*`` (the time limit applies where a file runs in a main
    thread: the CLI's workers, not the API's upload thread)."""
    return FileLimits(
        max_file_mb=settings.ingest.max_file_mb,
        max_doc_chars=settings.ingest.max_doc_chars,
        max_seconds=settings.ingest.file_timeout_s,
    )


def build_analyzer(settings: Settings, manifest: dict[str, Any] | None = None) -> Analyzer:
    """The BM25 analyzer; an index's own user dictionaries and query synonyms come from its manifest."""
    dicts = [Path(p) for p in (manifest or {}).get("analyzer", {}).get("user_dicts", [])]
    dicts += [p for p in settings.search.user_dicts if p not in dicts]
    return Analyzer(user_dicts=dicts, synonyms=query_synonyms(settings, manifest))


def index_domain(settings: Settings, manifest: dict[str, Any] | None = None) -> str | None:
    """The domain of an index: its record; for an index older than the record, its query instruction's
    (``None`` for a custom one; ``legal``, the old default, for none at all); for a new index (no manifest),
    the settings' (``--domain`` / ``ZHRAG_DOMAIN``, or the domain of ``--instruction``)."""
    if manifest is None:
        return (
            settings.embedding.domain
            if settings.embedding.instruction is None
            else domain_of(settings.embedding.instruction)
        )
    if manifest.get("domain"):
        return str(manifest["domain"])
    return domain_of(manifest.get("instruction")) if manifest.get("instruction") else "legal"


def query_synonyms(settings: Settings, manifest: dict[str, Any] | None = None) -> str:
    """Which query synonyms an index uses: the setting when it names a set or file; else what the index
    recorded; else by domain — the legal list for legal indexes only (on the medical sets it cost 1–3%
    nDCG@10 in BM25 mode: toyhom 0.255 → 0.248, kuake 0.587 → 0.579)."""
    if settings.search.query_synonyms != "auto":
        return settings.search.query_synonyms
    recorded = (manifest or {}).get("analyzer", {}).get("synonyms")
    if recorded and recorded != "custom":  # a set's name or the user's file
        return recorded
    return "legal" if index_domain(settings, manifest) in ("legal", None) else "none"


def _wrap_cache(embedder: Embedder, settings: Settings) -> Embedder:
    return CachedEmbedder(embedder, settings.embedding.cache) if settings.embedding.cache else embedder


def build_embedder(settings: Settings) -> Embedder:
    """A new embedder from settings (for ingest into a new index)."""
    if settings.embedding.backend == "openai":
        embedder = create_embedder(
            "openai",
            base_url=settings.embedding.base_url or "",
            model=settings.embedding.remote_model or settings.embedding.model,
            api_key=settings.embedding.api_key,
            query_model=settings.embedding.remote_query_model,
            query_prefix=settings.embedding.query_prefix,
            document_prefix=settings.embedding.document_prefix,
            instruction=settings.embedding.instruction,
            domain=settings.embedding.domain,
            dim=settings.embedding.dim,
            timeout_s=settings.embedding.timeout,
            retries=settings.embedding.retries,
        )
    else:
        embedder = create_embedder(
            "sentence-transformers",
            model=settings.embedding.model,
            instruction=settings.embedding.instruction,
            domain=settings.embedding.domain,
            dim=settings.embedding.dim,
            max_seq_length=settings.embedding.max_seq_length,
            device=settings.embedding.device,
            precision=settings.embedding.precision,
            batch_size=settings.embedding.batch_size,
            source=settings.embedding.model_source,
        )
    return _wrap_cache(embedder, settings)


def embedder_for_index(manifest: dict[str, Any], settings: Settings, model: str | None = None) -> Embedder:
    """Rebuild the embedder an index was built with, from its manifest.

    Args:
        manifest: The index manifest.
        settings: Runtime settings (device, API key, cache, ...).
        model: A model the caller asked for explicitly; it must match the manifest.

    Raises:
        IndexMismatchError: when ``model`` or the loaded model's dimension differ from the index.
    """
    built = manifest["embedder"]
    check_embedder(manifest, model, None)
    if built["backend"] == "openai":
        embedder = create_embedder(
            "openai",
            base_url=settings.embedding.base_url or built["base_url"],
            model=built["model"],
            api_key=settings.embedding.api_key,
            query_model=built.get("query_model"),
            query_prefix=built.get("query_prefix"),
            document_prefix=built.get("document_prefix", ""),
            instruction=built.get("instruction"),
            dim=built["dim"],
            timeout_s=settings.embedding.timeout,
            retries=settings.embedding.retries,
        )
    else:
        embedder = create_embedder(
            "sentence-transformers",
            model=built["model"],
            instruction=built.get("instruction"),
            dim=built.get("truncate_dim"),
            max_seq_length=built.get("max_seq_length", settings.embedding.max_seq_length),
            device=settings.embedding.device,
            precision=settings.embedding.precision,
            batch_size=settings.embedding.batch_size,
            source=settings.embedding.model_source,
        )
    check_embedder(manifest, None, embedder.dim)
    return _wrap_cache(embedder, settings)


def serving_embedder(embedder: Embedder, settings: Settings, on_batch: Callable[[int], None] | None = None) -> Embedder:
    """The embedder as a server uses it: :func:`model_worker`, recent query vectors cached in front
    (``ZHRAG_QUERY_CACHE_SIZE``)."""
    return query_cache(model_worker(embedder, settings, on_batch), settings)


def model_worker(embedder: Embedder, settings: Settings, on_batch: Callable[[int], None] | None = None) -> Embedder:
    """Concurrent queries micro-batched on the model's workers (``ZHRAG_MICROBATCH``).

    A model on the CPU runs each forward pass on half the cores (``ZHRAG_TORCH_THREADS`` overrides): the
    micro-batcher's two workers (searches' questions, bulk slices) run at the same time, and neither should
    take every core from the other or from the searches' own work — tokenising, BM25, FAISS, HTTP.
    """
    threads = settings.embedding.torch_threads
    if threads is None and isinstance(embedder, SentenceTransformerEmbedder) and embedder.device == "cpu":
        threads = max(1, (os.cpu_count() or 2) // 2)
    if threads:
        import torch

        torch.set_num_threads(threads)
    if not settings.serve.microbatch:
        return embedder
    if isinstance(embedder, SentenceTransformerEmbedder):  # one forward pass per micro-batch
        embedder.batch_size = max(embedder.batch_size, settings.serve.microbatch_size)
    return MicroBatcher(
        embedder,
        settings.serve.microbatch_wait_ms,
        settings.serve.microbatch_size,
        on_batch,
        bulk_slice=settings.serve.bulk_slice,
    )


def query_cache(embedder: Embedder, settings: Settings) -> Embedder:
    """An LRU cache of query vectors in front of ``embedder`` (``ZHRAG_QUERY_CACHE_SIZE``; 0: none)."""
    return QueryCache(embedder, settings.serve.query_cache_size) if settings.serve.query_cache_size > 0 else embedder


def build_services(
    settings: Settings,
    load_model: bool | None = None,
    model: str | None = None,
    serving: bool = False,
    on_embed_batch: Callable[[int], None] | None = None,
    embedder: Embedder | None = None,
) -> Services:
    """Open the index and load what searching it needs.

    Args:
        settings: Settings (``settings.index`` is the index directory).
        load_model: Load the embedding model (``False`` serves BM25 only); default from settings.
        model: Explicit model asked for by the user (checked against the manifest).
        serving: Concurrent use (the API): micro-batch and cache query embeddings.
        on_embed_batch: Told the size of each micro-batch (metrics).
        embedder: A loaded embedder to use as it is (a model shared by knowledge bases); checked against the
            manifest instead of loading one.
    """
    manifest = read_manifest(settings.index)
    index = Index(settings.index, settings.milvus.connection)
    if manifest["store"].get("backend") == "faiss":
        from retrieval.stores.faiss import set_search_threads

        set_search_threads(settings.search.faiss_threads)
    load = settings.serve.load_model if load_model is None else load_model
    if embedder is not None:
        check_embedder(manifest, model, embedder.dim)
    elif load:
        embedder = embedder_for_index(manifest, settings, model)
        if serving:
            embedder = serving_embedder(embedder, settings, on_embed_batch)
    reranker = (
        create_reranker(settings.search.reranker, settings.search.reranker_type) if settings.search.reranker else None
    )
    analyzer = build_analyzer(settings, manifest)
    searcher = build_searcher(settings, index, embedder, analyzer, reranker)
    dialogue = build_dialogue(settings, analyzer, embedder, index_domain(settings, manifest))
    return Services(settings, index, embedder, analyzer, searcher, reranker, dialogue)


def build_searcher(
    settings: Settings, index: Index, embedder: Embedder | None, analyzer: Analyzer, reranker: Reranker | None
) -> Searcher:
    """The searcher over ``index`` with the fusion settings."""
    weights = {DENSE: settings.search.weight_dense, BM25: settings.search.weight_bm25}
    return Searcher(
        index,
        embedder,
        analyzer,
        reranker=reranker,
        weights=weights,
        rrf_k=settings.search.rrf_k,
        candidates=settings.search.candidates,
        citations=CitationIndex.from_docstore(index.docs, settings.search.citation_aliases)
        if settings.search.citations
        else None,
    )


def embedding_similarity(embedder: Embedder):
    """Cosine similarity of two texts under ``embedder`` (documents side, so no instruction)."""

    def similarity(a: str, b: str) -> float:
        va, vb = embedder.embed_documents([a, b])
        return float(va @ vb)

    return similarity


def build_dialogue(
    settings: Settings, analyzer: Analyzer, embedder: Embedder | None = None, domain: str | None = None
) -> DialogueQueryBuilder:
    """The multi-turn query builder with the turn weights of the index's ``domain``, the LLM rewriter when
    ``ZHRAG_REWRITE_*`` is configured and embedding-based topic splitting when ``ZHRAG_TOPIC_MIN_SIMILARITY``
    is set and a model is loaded."""
    rewriter = None
    if settings.dialogue.rewrite_base_url and settings.dialogue.rewrite_model:
        rewriter = LLMQueryRewriter(
            settings.dialogue.rewrite_base_url,
            settings.dialogue.rewrite_model,
            settings.dialogue.rewrite_api_key,
            settings.dialogue.rewrite_timeout,
        )
        if settings.dialogue.rewrite_cache:
            rewriter = CachedRewriter(rewriter, settings.dialogue.rewrite_cache)
    similarity = None
    if settings.dialogue.topic_min_similarity is not None and embedder is not None:
        similarity = embedding_similarity(embedder)
    return DialogueQueryBuilder(
        analyzer,
        similarity=similarity,
        min_similarity=settings.dialogue.topic_min_similarity,
        rewriter=rewriter,
        weights=turn_weights(domain),
        rewrite_weight=settings.dialogue.rewrite_weight,
    )
