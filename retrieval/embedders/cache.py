"""A persistent embedding cache (SQLite) in front of any embedder: re-ingesting unchanged text is free."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.protocols import Embedder

__all__ = ["CachedEmbedder"]


class CachedEmbedder:
    """Wrap ``inner`` so each (embedder config, side, text) is embedded once and stored at ``path``."""

    def __init__(self, inner: Embedder, path: Path | str) -> None:
        self.inner = inner
        self.name = inner.name
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        self._lock = threading.Lock()
        desc = {k: v for k, v in inner.describe().items() if k not in ("base_url",)}
        self._salt = json.dumps(desc, sort_keys=True, ensure_ascii=False)

    @property
    def dim(self) -> int:
        """The inner embedder's dimension."""
        return self.inner.dim

    @property
    def instruction(self) -> str | None:
        """The inner embedder's query task (the cache key includes it)."""
        return self.inner.instruction

    def _key(self, side: str, text: str) -> str:
        return hashlib.sha256(f"{self._salt}\x1f{side}\x1f{text}".encode()).hexdigest()

    def _cached(self, side: str, texts: Sequence[str], embed: Callable[[Sequence[str]], np.ndarray]) -> np.ndarray:
        keys = [self._key(side, t) for t in texts]
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                part = keys[i : i + 500]
                marks = ",".join("?" * len(part))
                for key, blob in self._db.execute(f"SELECT key, vec FROM emb WHERE key IN ({marks})", part):
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in found}.items())
        if missing:
            vectors = embed([t for _, t in missing])
            rows = [(k, v.astype(np.float32).tobytes()) for (k, _), v in zip(missing, vectors, strict=True)]
            with self._lock:
                self._db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)", rows)
                self._db.commit()
            found.update({k: v for (k, _), v in zip(missing, vectors, strict=True)})
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Cached document embeddings."""
        return self._cached("document", texts, self.inner.embed_documents)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Cached query embeddings."""
        return self._cached("query", texts, self.inner.embed_queries)

    @property
    def token_spec(self) -> Any:
        """The inner model's tokenizer (chunk sizes are measured with it; the texts still go through the cache)."""
        spec = getattr(self.inner, "token_spec", None)
        if spec is None:
            raise AttributeError("token_spec")
        return spec

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Delegated to the inner embedder."""
        return self.inner.count_tokens(texts)

    def describe(self) -> dict[str, Any]:
        """The inner embedder's manifest entry (the cache is not part of the index)."""
        return self.inner.describe()
