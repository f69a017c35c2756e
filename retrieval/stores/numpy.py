"""Exact brute-force store in NumPy: no extra dependency; the reference the other backends are tested against."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from retrieval.stores.base import MISSING_ID, StoreBase, StoreError, check_vectors

__all__ = ["NumpyStore", "NUMPY_FILE"]

NUMPY_FILE = "vectors.npz"


class NumpyStore(StoreBase):
    """Vectors in one float32 matrix; search is a matrix product."""

    def __init__(self, dim: int, **options: object) -> None:
        self.dim = dim
        self._ids = np.zeros(0, dtype=np.int64)
        self._vectors = np.zeros((0, dim), dtype=np.float32)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Append vectors under new ids."""
        vectors = check_vectors(vectors, self.dim)
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) != len(vectors):
            raise StoreError(f"{len(ids)} ids for {len(vectors)} vectors")
        if np.isin(ids, self._ids).any():
            raise StoreError("some ids are already stored")
        self._ids = np.concatenate([self._ids, ids])
        self._vectors = np.concatenate([self._vectors, vectors])

    def delete(self, ids: np.ndarray) -> int:
        """Remove ids."""
        keep = ~np.isin(self._ids, np.asarray(ids, dtype=np.int64))
        removed = int((~keep).sum())
        self._ids, self._vectors = self._ids[keep], self._vectors[keep]
        return removed

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, excluded: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` by inner product."""
        queries = check_vectors(queries, self.dim)
        ids, vectors = self._ids, self._vectors
        if allowed is not None:
            mask = np.isin(ids, np.asarray(allowed, dtype=np.int64))
            ids, vectors = ids[mask], vectors[mask]
        if excluded is not None and len(excluded):
            mask = ~np.isin(ids, np.asarray(excluded, dtype=np.int64))
            ids, vectors = ids[mask], vectors[mask]
        k = max(1, min(k, self.count())) if self.count() else 1
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out = np.full((len(queries), k), MISSING_ID, dtype=np.int64)
        if len(ids):
            sims = queries @ vectors.T
            top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            n = top.shape[1]
            scores[:, :n] = np.take_along_axis(sims, top, axis=1)
            out[:, :n] = ids[top]
        return scores, out

    def count(self) -> int:
        """Number of vectors."""
        return len(self._ids)

    def items(self, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every stored (ids, vectors), in batches."""
        for start in range(0, len(self._ids), batch):
            yield self._ids[start : start + batch], self._vectors[start : start + batch]

    def save(self, path: Path) -> None:
        """Write ``vectors.npz`` into directory ``path``."""
        path.mkdir(parents=True, exist_ok=True)
        with open(path / NUMPY_FILE, "wb") as fh:
            np.savez(fh, ids=self._ids, vectors=self._vectors)

    @classmethod
    def load(cls, path: Path, dim: int, **options: object) -> NumpyStore:
        """Read a store written by :meth:`save`."""
        file = path / NUMPY_FILE
        if not file.is_file():
            raise StoreError(f"missing vector file {file}")
        data = np.load(file)
        store = cls(dim)
        store._ids, store._vectors = data["ids"], data["vectors"].astype(np.float32)
        if store._vectors.shape[1] != dim:
            raise StoreError(f"{file} holds {store._vectors.shape[1]}-d vectors, the manifest says {dim}")
        return store
