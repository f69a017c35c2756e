"""FAISS vector store: exact inner product (``IndexFlatIP``) or HNSW, behind an ``IndexIDMap2``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from retrieval.stores.base import MISSING_ID, StoreError, check_vectors

__all__ = ["FaissStore", "FAISS_FILE"]

FAISS_FILE = "vectors.faiss"
HNSW_M = 32
HNSW_EF_SEARCH = 128
IndexKind = Literal["flat", "hnsw"]


class FaissStore:
    """Vectors in FAISS with an id map, so chunks can be removed and ids stay the docstore's row ids.

    Args:
        dim: Vector dimension.
        kind: ``flat`` (exact, default; fine to a few million vectors on one machine) or ``hnsw``.
    """

    def __init__(self, dim: int, kind: IndexKind = "flat") -> None:
        import faiss

        self.dim = dim
        self.kind = kind
        if kind == "flat":
            inner = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efSearch = HNSW_EF_SEARCH
        else:
            raise StoreError(f"unknown faiss index kind {kind!r}")
        self._index = faiss.IndexIDMap2(inner)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under int64 ids."""
        vectors = check_vectors(vectors, self.dim)
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) != len(vectors):
            raise StoreError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(ids):
            self._index.add_with_ids(vectors, ids)

    def delete(self, ids: np.ndarray) -> int:
        """Remove ids (HNSW cannot remove: rebuild the index instead)."""
        import faiss

        if self.kind == "hnsw":
            raise StoreError("an HNSW index cannot delete vectors; rebuild the index")
        ids = np.asarray(ids, dtype=np.int64)
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids))) if len(ids) else 0

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product; ``allowed`` (int64 ids) filters inside FAISS."""
        import faiss

        queries = check_vectors(queries, self.dim)
        k = max(1, min(k, self.count())) if self.count() else 1
        if self.count() == 0 or (allowed is not None and len(allowed) == 0):
            n = len(queries)
            return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), MISSING_ID, dtype=np.int64)
        params = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64))
            params = faiss.SearchParameters(sel=selector)
        scores, ids = self._index.search(queries, k, params=params)
        scores[ids == MISSING_ID] = -np.inf
        return scores, ids

    def count(self) -> int:
        """Number of vectors."""
        return int(self._index.ntotal)

    def save(self, path: Path) -> None:
        """Write ``vectors.faiss`` into directory ``path``."""
        import faiss

        path.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(path / FAISS_FILE))

    @classmethod
    def load(cls, path: Path, dim: int, kind: IndexKind = "flat") -> FaissStore:
        """Read a store written by :meth:`save`."""
        import faiss

        file = path / FAISS_FILE
        if not file.is_file():
            raise StoreError(f"missing FAISS file {file}")
        store = cls.__new__(cls)
        store._index = faiss.read_index(str(file))
        store.dim, store.kind = dim, kind
        if store._index.d != dim:
            raise StoreError(f"{file} holds {store._index.d}-d vectors, the manifest says {dim}")
        return store
