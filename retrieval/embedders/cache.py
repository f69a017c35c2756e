"""A persistent embedding cache (SQLite) in front of any embedder: re-ingesting unchanged text is free."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from retrieval.embedders.base import Delegating, EmbedderBase

__all__ = ["CachedEmbedder"]


class CachedEmbedder(Delegating):
    """Wrap ``inner`` so each (embedder config, side, text) is embedded once and stored at ``path``.

    Chunk sizes are still measured with the inner model's tokenizer (``token_spec``), but texts, not token
    ids, go through the cache (``takes_token_ids`` is false) and the inner model is never given ids.
    """

    takes_token_ids = False  # type: ignore[assignment]

    def __init__(self, inner: EmbedderBase, path: Path | str) -> None:
        super().__init__(inner)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        self._lock = threading.Lock()
        desc = {k: v for k, v in inner.describe().items() if k not in ("base_url",)}
        self._salt = json.dumps(desc, sort_keys=True, ensure_ascii=False)

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

    def embed_token_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Refused: texts go through the cache."""
        return EmbedderBase.embed_token_ids(self, batch)

    def submit_queries(self, texts: Sequence[str]) -> Future[np.ndarray]:
        """Cached query vectors, computed now."""
        return EmbedderBase.submit_queries(self, texts)

    def close(self) -> None:
        """Close the cache file and the inner embedder."""
        with self._lock:
            self._db.close()
        self.inner.close()
