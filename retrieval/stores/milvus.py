"""Milvus vector store (scale-out; ``pip install 'zhrag[milvus]'``). Milvus Lite works with a local file URI.

Milvus owns the vectors and their durability: unlike the FAISS backend, writes go straight to the
collection rather than into zhrag's versioned snapshot, so a failed ingest may leave added vectors behind
(their chunks are not in the published docstore, so they are never returned).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pymilvus import MilvusClient

from retrieval.stores.base import MISSING_ID, StoreError, check_vectors

__all__ = ["MilvusStore", "MILVUS_FILE", "DEFAULT_URI", "DEFAULT_COLLECTION"]

MILVUS_FILE = "milvus.json"
DEFAULT_URI = "http://localhost:19530"
DEFAULT_COLLECTION = "zhrag"
_ID, _VECTOR = "id", "vector"
_INSERT_BATCH = 1000
_MAX_FILTER_IDS = 16384


class MilvusStore:
    """Inner-product search in a Milvus collection keyed by the docstore's row ids.

    Args:
        dim: Vector dimension.
        uri: Milvus server (``http://host:19530``) or a Milvus Lite file (``./milvus.db``).
        collection: Collection name (created if missing).
        token: Optional ``user:password`` or API token.
    """

    def __init__(self, dim: int, uri: str = DEFAULT_URI, collection: str = DEFAULT_COLLECTION, token: str = "") -> None:
        self.dim, self.uri, self.collection = dim, uri, collection
        self._client = MilvusClient(uri=uri, token=token)
        if not self._client.has_collection(collection):
            self._client.create_collection(
                collection_name=collection,
                dimension=dim,
                metric_type="IP",
                primary_field_name=_ID,
                vector_field_name=_VECTOR,
                id_type="int",
                auto_id=False,
            )

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert vectors under int64 ids."""
        vectors = check_vectors(vectors, self.dim)
        rows = [{_ID: int(i), _VECTOR: v.tolist()} for i, v in zip(ids, vectors, strict=True)]
        for start in range(0, len(rows), _INSERT_BATCH):
            self._client.insert(self.collection, rows[start : start + _INSERT_BATCH])

    def delete(self, ids: np.ndarray) -> int:
        """Delete ids; returns how many were requested and present."""
        ids = [int(i) for i in ids]
        if not ids:
            return 0
        present = self._client.get(self.collection, ids=ids, output_fields=[_ID])
        self._client.delete(self.collection, ids=ids)
        return len(present)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product; ``allowed`` becomes an ``id in [...]`` filter."""
        queries = check_vectors(queries, self.dim)
        expr = ""
        if allowed is not None:
            if len(allowed) > _MAX_FILTER_IDS:
                raise StoreError(f"Milvus filter limited to {_MAX_FILTER_IDS} ids; narrow the metadata filter")
            expr = f"{_ID} in [{','.join(str(int(i)) for i in allowed)}]"
        results = self._client.search(
            self.collection, data=queries.tolist(), limit=k, filter=expr, search_params={"metric_type": "IP"}
        )
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), MISSING_ID, dtype=np.int64)
        for row, hits in enumerate(results):
            for col, hit in enumerate(hits[:k]):
                scores[row, col] = hit["distance"]
                ids[row, col] = hit[_ID] if _ID in hit else hit["entity"][_ID]
        return scores, ids

    def count(self) -> int:
        """Rows in the collection."""
        self._client.flush(self.collection)
        return int(self._client.get_collection_stats(self.collection)["row_count"])

    def save(self, path: Path) -> None:
        """Record where the vectors live (Milvus persists them itself)."""
        path.mkdir(parents=True, exist_ok=True)
        (path / MILVUS_FILE).write_text(json.dumps({"uri": self.uri, "collection": self.collection}))

    @classmethod
    def load(cls, path: Path, dim: int, **options: str) -> MilvusStore:
        """Reconnect to the collection recorded by :meth:`save`."""
        file = path / MILVUS_FILE
        if not file.is_file():
            raise StoreError(f"missing {file}")
        conf = {**json.loads(file.read_text()), **options}
        return cls(dim, uri=conf["uri"], collection=conf["collection"], token=conf.get("token", ""))
