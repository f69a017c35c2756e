"""Remote embeddings from any OpenAI-compatible ``/v1/embeddings`` server (vLLM, TEI, Xinference, DashScope)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from retrieval.embedders.base import EmbedderBase, EmbedderError, truncate_dim
from retrieval.prompts import query_prompt, resolve_instruction

__all__ = ["OpenAIEmbedder", "DEFAULT_TIMEOUT_S", "DEFAULT_RETRIES"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 3
DEFAULT_BATCH = 32
BACKOFF_BASE_S = 0.5
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Without a tokenizer, count characters: a conservative upper bound for Chinese (>= 1 char per token).
CHARS_PER_TOKEN = 1.0


class OpenAIEmbedder(EmbedderBase):
    """Embed through an OpenAI-compatible endpoint.

    TEI's and vLLM's OpenAI routes do not add Qwen3's query instruction, so by default queries get
    ``Instruct: {task}\\nQuery:`` prepended here; set ``query_prefix=""`` for a model that needs none.

    Args:
        base_url: Server root, e.g. ``http://localhost:8080/v1`` (``/embeddings`` is appended).
        model: Model name sent for documents.
        api_key: Bearer token, if the server wants one.
        query_model: Model name for queries, if the server serves the query side separately.
        query_prefix: Text before each query; ``None`` = the Qwen3 instruction prompt.
        document_prefix: Text before each document.
        instruction: Task instruction used by the default query prefix.
        domain: Domain picking the default instruction.
        dim: Expected/truncated output dimension; a server answering with fewer is an error.
        batch_size: Texts per request.
        timeout_s: Per-request timeout.
        retries: Extra attempts on connection errors and 408/429/5xx, with exponential backoff.
        transport: An httpx transport (tests).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        query_model: str | None = None,
        query_prefix: str | None = None,
        document_prefix: str = "",
        instruction: str | None = None,
        domain: str | None = None,
        dim: int | None = None,
        batch_size: int = DEFAULT_BATCH,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not base_url:
            raise EmbedderError("the openai embedder needs a base URL (ZHRAG_EMBED_BASE_URL / --embed-base-url)")
        if not model:
            raise EmbedderError("the openai embedder needs a model name (ZHRAG_EMBED_MODEL / --model)")
        self.name = model
        self.base_url = base_url.rstrip("/")
        self.query_model = query_model or model
        self.instruction = resolve_instruction(instruction, domain)
        self.query_prefix = query_prompt(self.instruction) if query_prefix is None else query_prefix
        self.document_prefix = document_prefix
        self.batch_size = batch_size
        self.retries = retries
        self._dim = dim
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers, transport=transport)

    @property
    def dim(self) -> int:
        """Output dimension; asks the server once when not configured."""
        if self._dim is None:
            self._dim = int(self._request(["维度探测"], self.name).shape[1])
        return self._dim

    def _post(self, payload: dict[str, Any]) -> httpx.Response:
        url = f"{self.base_url}/embeddings"
        for attempt in range(self.retries + 1):
            try:
                response = self._client.post(url, json=payload)
            except httpx.HTTPError as exc:
                if attempt == self.retries:
                    raise EmbedderError(f"embedding server {url} unreachable: {exc}") from exc
            else:
                if response.status_code not in RETRY_STATUSES or attempt == self.retries:
                    return response
            time.sleep(BACKOFF_BASE_S * 2**attempt)
        raise AssertionError("unreachable")

    def _request(self, texts: list[str], model: str) -> np.ndarray:
        response = self._post({"model": model, "input": texts, "encoding_format": "float"})
        if response.status_code >= 400:
            raise EmbedderError(
                f"embedding server answered HTTP {response.status_code} for model {model!r}: {response.text[:300]}"
            )
        try:
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            vectors = np.asarray([item["embedding"] for item in data], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise EmbedderError(f"embedding server returned an unexpected body: {response.text[:300]}") from exc
        if vectors.shape[0] != len(texts):
            raise EmbedderError(f"embedding server returned {vectors.shape[0]} vectors for {len(texts)} inputs")
        if self._dim is not None and vectors.shape[1] < self._dim:
            raise EmbedderError(
                f"embedding server returned dimension {vectors.shape[1]}, expected {self._dim} (model {model!r})"
            )
        return vectors

    def _embed(self, texts: Sequence[str], prefix: str, model: str) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batches = [
            self._request([prefix + t for t in texts[i : i + self.batch_size]], model)
            for i in range(0, len(texts), self.batch_size)
        ]
        return truncate_dim(np.concatenate(batches), self._dim)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embed passages with ``document_prefix``."""
        return self._embed(texts, self.document_prefix, self.name)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed queries with ``query_prefix`` and ``query_model``."""
        return self._embed(texts, self.query_prefix, self.query_model)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """No tokenizer is available remotely: a character-based upper bound."""
        return [int(len(t) / CHARS_PER_TOKEN) for t in texts]

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def describe(self) -> dict[str, Any]:
        """Manifest entry (no API key)."""
        return {
            "backend": "openai",
            "model": self.name,
            "query_model": self.query_model,
            "base_url": self.base_url,
            "query_prefix": self.query_prefix,
            "document_prefix": self.document_prefix,
            "instruction": self.instruction,
            "dim": self.dim,
        }
