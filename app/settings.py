"""All configuration in one tree: a section per concern, every field an environment variable ``ZHRAG_<NAME>``.

``Settings`` holds where the indexes are (``index``, ``root``, ``default_kb``) and the sections ``embedding``,
``ingest``, ``milvus``, ``search``, ``dialogue``, ``serve`` and ``auth``. A field's variable is its flat name,
``ZHRAG_`` + the field's alias or name in capitals: ``Settings().milvus.uri`` is ``ZHRAG_MILVUS_URI``,
``serve.port`` is ``ZHRAG_PORT``. The same flat names work as keyword arguments (``Settings(index=…,
model=…)``) and in :meth:`Settings.updated`. Values come from the keywords, then the environment, then the
file ``ZHRAG_ENV_FILE`` names (default ``.env`` in the working directory; empty: none), then the defaults.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

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

__all__ = [
    "Settings",
    "EmbeddingSettings",
    "IngestSettings",
    "MilvusSettings",
    "SearchSettings",
    "DialogueSettings",
    "ServeSettings",
    "AuthSettings",
    "DEFAULT_INDEX_DIR",
    "ENV_PREFIX",
]

DEFAULT_INDEX_DIR = Path("zhrag_index")
ENV_PREFIX = "ZHRAG_"
ENV_FILE = os.environ.get("ZHRAG_ENV_FILE", ".env") or None
"""The dotenv file settings are read from (``ZHRAG_ENV_FILE``; empty: none, as the tests run)."""


def _split_list(value: Any) -> Any:
    """``a,b`` or ``["a", "b"]`` (a list variable takes either)."""
    if isinstance(value, str):
        text = value.strip()
        return json.loads(text) if text.startswith("[") else [d.strip() for d in text.split(",") if d.strip()]
    return value


class Section(BaseModel):
    """A group of settings; a field's flat name is its alias, else its name."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", validate_default=False)

    @field_validator("*", mode="before")
    @classmethod
    def _lists_and_blanks(cls, value: Any, info: Any) -> Any:
        """A list variable is JSON or comma-separated; an empty optional path or name means none (docker
        compose passes an unset variable as ``VAR=``, which must not become the directory ``.``)."""
        field = cls.model_fields[info.field_name]
        if get_origin(field.annotation) is list:
            return _split_list(value)
        if isinstance(value, str) and not value.strip() and field.default is None:
            return None
        return value


class EmbeddingSettings(Section):
    """The embedding model: loaded locally or called on an OpenAI-compatible server."""

    backend: EmbedderBackend = Field("sentence-transformers", alias="embedder")
    model: str = Field(DEFAULT_MODEL, description="Hub id, modelscope:ORG/NAME, or a local directory (ingest)")
    model_source: ModelSource = "huggingface"
    domain: Domain = DEFAULT_DOMAIN
    instruction: str | None = Field(None, description="Query instruction; overrides the domain default")
    dim: int | None = Field(None, description="Matryoshka output dimension")
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str | None = None
    precision: Precision = "auto"
    torch_threads: int | None = Field(
        None, description="CPU threads for the model (default: the cores; serving on the CPU: half of them)"
    )
    base_url: str | None = Field(None, alias="embed_base_url")
    api_key: str | None = Field(None, alias="embed_api_key")
    remote_model: str | None = Field(None, alias="embed_model")
    remote_query_model: str | None = Field(None, alias="embed_query_model")
    query_prefix: str | None = Field(None, alias="embed_query_prefix")
    document_prefix: str = Field("", alias="embed_document_prefix")
    timeout: float = Field(60.0, alias="embed_timeout")
    retries: int = Field(3, alias="embed_retries")
    cache: Path | None = Field(None, alias="embed_cache", description="SQLite embedding cache shared across runs")


class IngestSettings(Section):
    """Ingest: throughput (none of it changes the index written), per-file limits, a new index's store."""

    workers: int | None = Field(None, description="Processes for ingest's CPU stages (default: the cores)")
    devices: list[str] = Field(
        default_factory=list, description="One model replica per device: cuda:0,cuda:1 or a JSON list"
    )
    max_batch_tokens: int | None = Field(None, description="Padded tokens per embedding batch (default by device)")
    max_file_mb: float = Field(
        64.0, gt=0, alias="ingest_max_file_mb", description="Largest input file (JSONL is read in parts)"
    )
    max_doc_chars: int = Field(
        5_000_000, gt=0, alias="ingest_max_doc_chars", description="Longest document (file text or JSONL record)"
    )
    file_timeout_s: float = Field(
        300.0, ge=0, alias="ingest_file_timeout_s", description="Longest one file may take to load and chunk (0: none)"
    )
    store: StoreBackend = Field("faiss", description="Vector store of a new index")


class MilvusSettings(Section):
    """Where a Milvus index keeps its vectors."""

    uri: str | None = Field(
        None, alias="milvus_uri", description="Milvus server (http://…) or Milvus Lite file; default INDEX/milvus.db"
    )
    collection: str | None = Field(
        None, alias="milvus_collection", description="Milvus collection (default: from the index directory)"
    )
    token: str | None = Field(
        None, alias="milvus_token", description="Milvus user:password or API token (never written to the index)"
    )

    @property
    def connection(self) -> dict[str, str]:
        """The store's connection secrets, passed to it and never written."""
        return {"token": self.token} if self.token else {}


class SearchSettings(Section):
    """Retrieval: the legs, their fusion, the reranker, statute citations and the lexical analyzer."""

    candidates: int = DEFAULT_CANDIDATES
    rrf_k: int = RRF_K
    weight_dense: float = 1.0
    weight_bm25: float = 1.0
    reranker: str | None = Field(None, description="Reranker model id or directory (enables rerank=true)")
    reranker_type: RerankerType = "auto"
    citations: bool = Field(True, description="Put the statute articles a query cites first (民法典第1165条)")
    citation_aliases: Path | None = Field(None, description="Extra law short names: lines of 'short<TAB>full title'")
    user_dicts: list[Path] = Field(default_factory=list, description="Extra jieba user dictionaries")
    query_synonyms: str = Field(
        "auto",
        description="Query synonyms for BM25: auto (the legal list for a legal index, none otherwise), legal, none, "
        "or a file of colloquial<TAB>terms lines",
    )
    faiss_threads: int = Field(1, description="FAISS threads when searching (one query at a time: 1 avoids spinning)")


class DialogueSettings(Section):
    """Multi-turn search: optional LLM rewriting (an OpenAI-compatible chat endpoint; off when unset), topics."""

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


class ServeSettings(Section):
    """The HTTP service: where it listens, its limits and its throughput."""

    host: str = "127.0.0.1"
    port: int = 8000
    load_model: bool = Field(True, description="Load the embedding model at start-up (False: bm25 only)")
    reload_interval: float = Field(2.0, description="Seconds between checks for a new index version (0: never)")
    log_format: Literal["text", "json"] = Field("text", description="serve's log lines: text or one JSON object each")
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
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins browsers may call from (JSON list or comma-separated; * = any)"
    )
    knowledge_ids: list[str] = Field(
        default_factory=list, description="Extra Dify knowledge_id values accepted (the index dir name always is)"
    )


class AuthSettings(Section):
    """Who may do what: Bearer keys, admin keys, a key file with roles per knowledge base."""

    api_key: str | None = Field(None, description="One accepted Bearer key (same as a one-item ZHRAG_API_KEYS)")
    api_keys: list[str] = Field(
        default_factory=list, description="Accepted Bearer keys (JSON list or comma-separated); every route but probes"
    )
    admin_keys: list[str] = Field(
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

    @property
    def keys(self) -> list[str]:
        """The query keys (``api_keys`` plus ``api_key``)."""
        return [k for k in [*self.api_keys, self.api_key] if k]

    @property
    def accepted_keys(self) -> list[str]:
        """Every key some route accepts: the query keys and the admin keys (accepted everywhere)."""
        return [*self.keys, *(k for k in self.admin_keys if k)]


SECTIONS: dict[str, type[Section]] = {
    "embedding": EmbeddingSettings,
    "ingest": IngestSettings,
    "milvus": MilvusSettings,
    "search": SearchSettings,
    "dialogue": DialogueSettings,
    "serve": ServeSettings,
    "auth": AuthSettings,
}
TOP_LEVEL = ("index", "root", "default_kb")
FLAT_NAMES: dict[str, tuple[str, str]] = {
    (info.alias or name): (section, name)
    for section, model in SECTIONS.items()
    for name, info in model.model_fields.items()
}
"""Flat name (the variable without ``ZHRAG_``, lower case) -> (section, field)."""


def _by_section(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The values of flat names grouped by section, ``{section: {field: value}}`` (other keys left out)."""
    grouped: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        if key in FLAT_NAMES:
            section, name = FLAT_NAMES[key]
            grouped.setdefault(section, {})[name] = value
    return grouped


class _FlatEnvironment(PydanticBaseSettingsSource):
    """``ZHRAG_<FLAT NAME>`` variables from the environment, then the dotenv file, as flat names."""

    def __init__(self, settings_cls: type[BaseSettings], env_file: str | None) -> None:
        super().__init__(settings_cls)
        self.env_file = env_file

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # the whole tree at once
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        from dotenv import dotenv_values

        found: dict[str, Any] = {}
        if self.env_file and Path(self.env_file).is_file():
            found.update({k.lower(): v for k, v in dotenv_values(self.env_file).items() if v is not None})
        found.update({k.lower(): v for k, v in os.environ.items()})
        prefix = ENV_PREFIX.lower()
        names = (*TOP_LEVEL, *FLAT_NAMES)
        return {name: found[prefix + name] for name in names if prefix + name in found}


class Settings(BaseSettings):
    """zhrag settings: where the indexes are, and one section per concern (see the module's docstring)."""

    model_config = SettingsConfigDict(extra="forbid")
    env_file: ClassVar[str | None] = ENV_FILE

    index: Path = Field(DEFAULT_INDEX_DIR, description="Index directory")
    root: Path | None = Field(
        None, description="Serve every index under this directory, each a knowledge base named by its directory"
    )
    default_kb: str | None = Field(
        None, description="The knowledge base the top-level routes use (default: the only one); /kbs/{kb}/… name one"
    )
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    milvus: MilvusSettings = Field(default_factory=MilvusSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    dialogue: DialogueSettings = Field(default_factory=DialogueSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _FlatEnvironment(settings_cls, cls.env_file)

    @model_validator(mode="before")
    @classmethod
    def _into_sections(cls, data: Any) -> Any:
        """Flat names (keywords, variables) into their sections; a section given whole is taken as it is."""
        if not isinstance(data, dict):
            return data
        tree = {key: value for key, value in data.items() if key not in FLAT_NAMES}
        for section, values in _by_section(data).items():
            given = tree.get(section, {})
            given = given.model_dump() if isinstance(given, Section) else given
            tree[section] = {**values, **given} if isinstance(given, dict) else given
        return tree

    @field_validator("root", "default_kb", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """``ZHRAG_ROOT=`` (as docker compose passes an unset variable) means none, not the directory ``.``."""
        return None if isinstance(value, str) and not value.strip() else value

    def updated(self, **flat: Any) -> Settings:
        """A copy with fields replaced by their flat names (``updated(reranker=…, index=…)``)."""
        unknown = set(flat) - set(TOP_LEVEL) - set(FLAT_NAMES)
        if unknown:
            raise TypeError(f"no setting {', '.join(sorted(unknown))}")
        update = {key: value for key, value in flat.items() if key in TOP_LEVEL}
        for section, values in _by_section(flat).items():
            update[section] = getattr(self, section).model_copy(update=values)
        return self.model_copy(update=update)
