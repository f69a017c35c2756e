"""All configuration in one place: environment variables with the ``ZHRAG_`` prefix (or a ``.env`` file)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from retrieval.dialogue import REWRITE_WEIGHT
from retrieval.embedders import EmbedderBackend
from retrieval.embedders.microbatch import DEFAULT_BULK_SLICE
from retrieval.embedders.sentence_transformers import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_SEQ_LENGTH,
    DEFAULT_MODEL,
    ModelSource,
    Precision,
)
from retrieval.fusion import RRF_K
from retrieval.prompts import DEFAULT_DOMAIN, Domain
from retrieval.rerankers import RerankerType
from retrieval.searcher import DEFAULT_CANDIDATES
from retrieval.stores import StoreBackend

__all__ = ["Settings", "DEFAULT_INDEX_DIR"]

DEFAULT_INDEX_DIR = Path("zhrag_index")
ENV_FILE = os.environ.get("ZHRAG_ENV_FILE", ".env") or None
"""The dotenv file settings are read from (``ZHRAG_ENV_FILE``; empty: none, as the tests run)."""


class Settings(BaseSettings):
    """zhrag settings. Every field can be set as ``ZHRAG_<FIELD>`` (e.g. ``ZHRAG_INDEX=/data/index``), also in
    the file ``ZHRAG_ENV_FILE`` names (default ``.env`` in the working directory; empty: none)."""

    model_config = SettingsConfigDict(env_prefix="ZHRAG_", env_file=ENV_FILE, extra="ignore")

    index: Path = Field(DEFAULT_INDEX_DIR, description="Index directory")
    root: Path | None = Field(
        None, description="Serve every index under this directory, each a knowledge base named by its directory"
    )
    default_kb: str | None = Field(
        None, description="The knowledge base the top-level routes use (default: the only one); /kbs/{kb}/… name one"
    )
    # Embedding
    embedder: EmbedderBackend = "sentence-transformers"
    model: str = Field(DEFAULT_MODEL, description="Hub id, modelscope:ORG/NAME, or a local directory (ingest)")
    model_source: ModelSource = "huggingface"
    domain: Domain = DEFAULT_DOMAIN
    instruction: str | None = Field(None, description="Query instruction; overrides the domain default")
    dim: int | None = Field(None, description="Matryoshka output dimension")
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str | None = None
    precision: Precision = "auto"
    embed_base_url: str | None = None
    embed_api_key: str | None = None
    embed_model: str | None = None
    embed_query_model: str | None = None
    embed_query_prefix: str | None = None
    embed_document_prefix: str = ""
    embed_timeout: float = 60.0
    embed_retries: int = 3
    embed_cache: Path | None = Field(None, description="SQLite embedding cache shared across runs")
    # Ingest throughput (none of these change the index written)
    workers: int | None = Field(None, description="Processes for ingest's CPU stages (default: the cores)")
    devices: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="One model replica per device: cuda:0,cuda:1 or a JSON list"
    )
    max_batch_tokens: int | None = Field(None, description="Padded tokens per embedding batch (default by device)")
    # Statute citations
    citations: bool = Field(True, description="Put the statute articles a query cites first (民法典第1165条)")
    citation_aliases: Path | None = Field(None, description="Extra law short names: lines of 'short<TAB>full title'")
    # Vector store of a new index
    store: StoreBackend = Field("faiss", description="Vector store of a new index")
    milvus_uri: str | None = Field(
        None, description="Milvus server (http://…) or Milvus Lite file; default INDEX/milvus.db"
    )
    milvus_collection: str | None = Field(None, description="Milvus collection (default: from the index directory)")
    milvus_token: str | None = Field(None, description="Milvus user:password or API token (never written to the index)")
    # Per-file limits of ingest (a file over one is skipped and reported)
    ingest_max_file_mb: float = Field(64.0, gt=0, description="Largest input file (JSONL is read in parts)")
    ingest_max_doc_chars: int = Field(5_000_000, gt=0, description="Longest document (file text or JSONL record)")
    ingest_file_timeout_s: float = Field(
        300.0, ge=0, description="Longest one file may take to load and chunk (0: none)"
    )
    # Serving throughput
    microbatch: bool = Field(True, description="Embed concurrent requests' queries together in one forward pass")
    microbatch_wait_ms: float = Field(2.0, description="Longest a query waits for others to join its batch")
    microbatch_size: int = Field(64, description="Most texts in one micro-batch")
    bulk_slice: int = Field(
        DEFAULT_BULK_SLICE,
        ge=1,
        description="Most texts of one bulk forward pass (documents, ingest batches, large embedding requests); "
        "bulk requests take turns slice by slice and are cancelled between slices; searches have their own worker "
        "(raise it on a GPU, where batches pay)",
    )
    max_bulk_per_key: int = Field(2, ge=1, description="Bulk embedding requests one key may have running (429 above)")
    query_cache_size: int = Field(4096, description="Query vectors kept in an LRU cache (0: off)")
    torch_threads: int | None = Field(
        None, description="CPU threads for the model (default: the cores; serving on the CPU: half of them)"
    )
    faiss_threads: int = Field(1, description="FAISS threads when searching (one query at a time: 1 avoids spinning)")
    # Lexical leg
    user_dicts: list[Path] = Field(default_factory=list, description="Extra jieba user dictionaries")
    query_synonyms: str = Field(
        "auto",
        description="Query synonyms for BM25: auto (the legal list for a legal index, none otherwise), legal, none, "
        "or a file of colloquial<TAB>terms lines",
    )
    # Search
    candidates: int = DEFAULT_CANDIDATES
    rrf_k: int = RRF_K
    weight_dense: float = 1.0
    weight_bm25: float = 1.0
    reranker: str | None = Field(None, description="Reranker model id or directory (enables rerank=true)")
    reranker_type: RerankerType = "auto"
    # Optional LLM query rewriting for conversations (OpenAI-compatible chat endpoint); off when unset
    rewrite_base_url: str | None = None
    rewrite_model: str | None = None
    rewrite_api_key: str | None = None
    rewrite_timeout: float = 3.0
    rewrite_cache: Path | None = Field(None, description="SQLite cache of LLM rewrites (reruns are free)")
    rewrite_weight: float = Field(
        REWRITE_WEIGHT, gt=0, description="Fusion weight of the LLM's rewritten question beside the builder's queries"
    )
    topic_min_similarity: float | None = Field(
        None, description="Also split topics where consecutive user turns embed less similar than this (cosine)"
    )
    # Service
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = Field(None, description="One accepted Bearer key (same as a one-item ZHRAG_API_KEYS)")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Accepted Bearer keys (JSON list or comma-separated); every route but probes"
    )
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Admin keys: everything on every base, creating and deleting bases"
    )
    keys_file: Path | None = Field(
        None, description="TOML or JSON file of keys (SHA-256 hashes) with a role per knowledge base (app/access.py)"
    )
    anonymous_role: Literal["none", "read", "write", "admin"] | None = Field(
        None,
        description="What a request without a key may do; default: none when keys are set, else admin on a "
        "loopback host and read on any other",
    )
    rate_limit: float = Field(
        0.0,
        ge=0,
        description="Requests per second per key (burst twice that; 429 above; 0: no limit); a key file "
        "may give a key its own",
    )
    max_body_bytes: int = Field(8 << 20, description="Largest request body (413 above)")
    max_upload_bytes: int = Field(128 << 20, description="Largest POST /documents body (files; 413 above)")
    write_wait_s: float = Field(
        5.0, ge=0, description="POST/DELETE /documents answer 200 when done this soon, else 202 with a job to follow"
    )
    request_timeout_s: float = Field(60.0, ge=0, description="Longest a request may take (504 after; 0: no limit)")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins browsers may call from (JSON list or comma-separated; * = any)"
    )
    knowledge_ids: list[str] = Field(
        default_factory=list,
        description="Extra Dify knowledge_id values accepted (the index dir name always is)",
    )
    load_model: bool = Field(True, description="Load the embedding model at start-up (False: bm25 only)")
    log_format: Literal["text", "json"] = Field("text", description="serve's log lines: text or one JSON object each")
    reload_interval: float = Field(2.0, description="Seconds between checks for a new index version (0: never)")

    @property
    def store_connection(self) -> dict[str, str]:
        """The vector store's connection secrets (``ZHRAG_MILVUS_TOKEN``), passed to it and never written."""
        return {"token": self.milvus_token} if self.milvus_token else {}

    @property
    def keys(self) -> list[str]:
        """The query keys (``api_keys`` plus ``api_key``)."""
        return [k for k in [*self.api_keys, self.api_key] if k]

    @property
    def accepted_keys(self) -> list[str]:
        """Every key some route accepts: the query keys and the admin keys (accepted everywhere)."""
        return [*self.keys, *(k for k in self.admin_keys if k)]

    @field_validator("root", "default_kb", "keys_file", "anonymous_role", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """``ZHRAG_KEYS_FILE=`` (as docker compose passes an unset variable) means none, not the directory ``.``."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("devices", "api_keys", "admin_keys", "cors_origins", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        """``a,b`` or ``["a", "b"]``."""
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [d.strip() for d in text.split(",") if d.strip()]
        return value
