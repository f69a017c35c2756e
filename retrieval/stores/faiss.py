"""FAISS vector store: exact inner product, HNSW or IVF-PQ, behind an ``IndexIDMap2``.

Writes always go to an exact flat index; the layout asked for (``hnsw``, ``ivfpq``, or ``auto``: exact
below ``AUTO_EXACT_BELOW`` vectors, HNSW above) is built from it when the store is saved. A saved
approximate index is searched as it is and turned back into the flat working copy only when a later
ingest changes it (every layout keeps the exact vectors, so nothing is lost on the way).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from retrieval.stores.base import MISSING_ID, StoreBase, StoreError, check_vectors

__all__ = [
    "FaissStore",
    "FAISS_FILE",
    "FAISS_INDEX_TYPES",
    "IndexType",
    "AnnParams",
    "AUTO_EXACT_BELOW",
    "set_search_threads",
]

FAISS_FILE = "vectors.faiss"
IndexType = Literal["flat", "hnsw", "ivfpq", "auto"]
FAISS_INDEX_TYPES: tuple[str, ...] = ("auto", "flat", "hnsw", "ivfpq")
AUTO_EXACT_BELOW = 200_000
"""``auto`` keeps exact search below this many vectors (a flat scan is a few ms there) and uses HNSW above."""
_TRAIN_SAMPLE = 64 * 1024


def set_search_threads(threads: int) -> None:
    """FAISS's OpenMP threads for this process.

    A server searches one query at a time, which FAISS runs on one thread anyway; its idle OpenMP
    workers then spin for a while and take the cores from the model's next forward pass (measured on
    2 cores: dense search 22.6 ms with 2 FAISS threads, 16.1 ms with 1, the model alone 14.3 ms).
    """
    import faiss

    faiss.omp_set_num_threads(max(1, threads))


@dataclass(frozen=True)
class AnnParams:
    """Approximate-search parameters (recorded in the manifest; the search-time ones can be changed there).

    Attributes:
        hnsw_m: HNSW graph degree.
        ef_construction: HNSW build beam width.
        ef_search: HNSW search beam width (recall vs speed).
        nlist: IVF lists (``0``: about 4 x sqrt(n)).
        pq_m: PQ sub-quantizers (``0``: dim / 16); each codes ``dim / pq_m`` dimensions in 8 bits.
        nprobe: IVF lists visited per query.
        refine: IVF-PQ candidates re-scored exactly, as a multiple of ``k``.
    """

    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nlist: int = 0
    pq_m: int = 0
    nprobe: int = 32
    refine: int = 16


class FaissStore(StoreBase):
    """Vectors in FAISS with an id map, so chunks can be removed and ids stay the docstore's row ids.

    Args:
        dim: Vector dimension.
        kind: ``auto`` (default), ``flat`` (exact), ``hnsw`` or ``ivfpq`` (IVF with product quantisation
            and an exact re-scoring of the top candidates).
        **params: :class:`AnnParams` fields.
    """

    def __init__(self, dim: int, kind: IndexType = "auto", **params: Any) -> None:
        import faiss

        if kind not in FAISS_INDEX_TYPES:
            raise StoreError(f"unknown faiss index type {kind!r}; choose one of {FAISS_INDEX_TYPES}")
        self.dim = dim
        self.kind = kind
        self.params = AnnParams(**{k: v for k, v in params.items() if k in AnnParams.__dataclass_fields__})
        self.layout = "flat"
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._dirty = True
        self._ids: np.ndarray | None = None
        self._excluded: tuple[np.ndarray, Any, Any] | None = None

    # -- writing ---------------------------------------------------------------------------------
    def _writable(self) -> Any:
        """The flat working copy (rebuilt from an approximate layout's exact vectors on first change)."""
        import faiss

        if self.layout != "flat":
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            vectors = self._index.index.reconstruct_n(0, self._index.ntotal) if len(ids) else np.zeros((0, self.dim))
            flat = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            if len(ids):
                flat.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
            self._index, self.layout = flat, "flat"
        self._dirty = True
        self._ids = None
        return self._index

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under int64 ids."""
        vectors = check_vectors(vectors, self.dim)
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) != len(vectors):
            raise StoreError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(ids):
            self._writable().add_with_ids(vectors, ids)

    def delete(self, ids: np.ndarray) -> int:
        """Remove ids."""
        import faiss

        ids = np.asarray(ids, dtype=np.int64)
        return int(self._writable().remove_ids(faiss.IDSelectorBatch(ids))) if len(ids) else 0

    # -- searching -------------------------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, excluded: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product; ``allowed`` and ``excluded`` (int64 ids) filter inside FAISS."""
        queries = check_vectors(queries, self.dim)
        k = max(1, min(k, self.count())) if self.count() else 1
        if excluded is not None and len(excluded) and (allowed is not None or self.layout == "ivfpq"):
            allowed = np.setdiff1d(self._positions() if allowed is None else allowed, excluded)
            excluded = None
        if self.count() == 0 or (allowed is not None and len(allowed) == 0):
            n = len(queries)
            return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), MISSING_ID, dtype=np.int64)
        scores, ids = self._index.search(queries, k, params=self._search_params(allowed, excluded))
        scores[ids == MISSING_ID] = -np.inf
        return scores, ids

    def _search_params(self, allowed: np.ndarray | None, excluded: np.ndarray | None = None) -> Any:
        import faiss

        p = self.params
        if self.layout == "ivfpq":
            # IndexIDMap2 translates only a top-level selector, which the re-scoring stage does not pass
            # down: select the IVF scan's positions directly.
            sel = None
            if allowed is not None:
                positions = np.flatnonzero(np.isin(self._positions(), np.asarray(allowed, dtype=np.int64)))
                sel = faiss.IDSelectorBatch(positions.astype(np.int64))
            inner = faiss.SearchParametersIVF(nprobe=p.nprobe, sel=sel)
            return faiss.IndexRefineSearchParameters(k_factor=float(p.refine), base_index_params=inner)
        sel = faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64)) if allowed is not None else None
        if excluded is not None and len(excluded):  # (``allowed`` is None here)
            sel = self._not_in(excluded)
        if self.layout == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=p.ef_search, sel=sel)
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    def _not_in(self, excluded: np.ndarray) -> Any:
        """A selector of every id but ``excluded``; kept for the next search with the same (immutable) array,
        as a segment passes its deletions on every query."""
        import faiss

        cached = self._excluded  # one read: versions sharing this store search it from several threads
        if cached is None or cached[0] is not excluded:
            batch = faiss.IDSelectorBatch(np.asarray(excluded, dtype=np.int64))
            cached = (excluded, batch, faiss.IDSelectorNot(batch))  # Not refers to batch: keep both
            self._excluded = cached
        return cached[2]

    def _positions(self) -> np.ndarray:
        """Id at each position of the inner index."""
        import faiss

        if self._ids is None:
            self._ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        return self._ids

    def count(self) -> int:
        """Number of vectors."""
        return int(self._index.ntotal)

    def items(self, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every stored (ids, exact vectors), in batches (HNSW and IVF-PQ keep the exact vectors too)."""
        ids = self._positions()
        for start in range(0, len(ids), batch):
            n = min(batch, len(ids) - start)
            vectors = self._index.index.reconstruct_n(start, n)
            yield ids[start : start + n], np.ascontiguousarray(vectors, dtype=np.float32)

    # -- persistence -----------------------------------------------------------------------------
    def resolved_layout(self) -> str:
        """The layout :meth:`save` writes for the current size."""
        if self.kind != "auto":
            return self.kind
        return "flat" if self.count() < AUTO_EXACT_BELOW else "hnsw"

    def describe(self) -> dict[str, Any]:
        """Manifest entry: the requested type, the layout on disk and the parameters."""
        return {"backend": "faiss", "kind": self.kind, "layout": self.layout, **asdict(self.params)}

    def save(self, path: Path) -> None:
        """Build the requested layout (if the vectors changed) and write ``vectors.faiss`` into ``path``."""
        import faiss

        if self._dirty:
            layout = self.resolved_layout()
            self._index, self.layout, self._dirty, self._ids = self._build(layout), layout, False, None
        path.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(path / FAISS_FILE))

    def _build(self, layout: str) -> Any:
        import faiss

        flat = self._writable()
        if layout == "flat":
            return flat
        ids = faiss.vector_to_array(flat.id_map).astype(np.int64)
        vectors = flat.index.reconstruct_n(0, flat.ntotal) if len(ids) else np.zeros((0, self.dim), np.float32)
        return build_ann(layout, np.ascontiguousarray(vectors, dtype=np.float32), self.params, ids)

    @classmethod
    def load(
        cls, path: Path, dim: int, kind: IndexType = "auto", layout: str | None = None, **params: Any
    ) -> FaissStore:
        """Read a store written by :meth:`save` (``layout`` is what the manifest says was written; indexes
        from before layouts were recorded are flat or HNSW, as their ``kind`` says)."""
        import faiss

        file = path / FAISS_FILE
        if not file.is_file():
            raise StoreError(f"missing FAISS file {file}")
        store = cls(dim, kind, **params)
        store._index = faiss.read_index(str(file))
        store.layout, store._dirty = layout or ("hnsw" if kind == "hnsw" else "flat"), False
        if store._index.d != dim:
            raise StoreError(f"{file} holds {store._index.d}-d vectors, the manifest says {dim}")
        return store


def build_ann(layout: str, vectors: np.ndarray, params: AnnParams, ids: np.ndarray | None = None) -> Any:
    """An inner-product FAISS index of ``layout`` (``flat``, ``hnsw``, ``ivfpq``) holding ``vectors`` under
    ``ids`` (default 0..n-1), wrapped in an ``IndexIDMap2``.

    IVF-PQ is wrapped in an exact re-scoring stage (``IndexRefineFlat``), so it keeps the exact vectors:
    that costs the flat index's memory on top of the codes, and buys recall.
    """
    import faiss

    n, dim = vectors.shape
    if layout == "flat":
        index = faiss.IndexFlatIP(dim)
    elif layout == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
    elif layout == "ivfpq":
        nlist = params.nlist or max(1, int(4 * np.sqrt(max(n, 1))))
        pq_m = params.pq_m or max(1, dim // 16)
        if dim % pq_m:
            raise StoreError(f"pq_m {pq_m} must divide the dimension {dim}")
        if n < max(nlist, 256):
            raise StoreError(f"IVF-PQ needs at least {max(nlist, 256)} vectors to train; use flat or hnsw")
        base = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        sample = vectors
        size = max(_TRAIN_SAMPLE, 40 * nlist)  # k-means wants ~39 points per list
        if n > size:
            sample = vectors[np.sort(np.random.default_rng(0).choice(n, size=size, replace=False))]
        base.train(sample)
        base.nprobe = params.nprobe
        index = faiss.IndexRefineFlat(base)
        index.k_factor = float(params.refine)
    else:
        raise StoreError(f"unknown faiss layout {layout!r}")
    mapped = faiss.IndexIDMap2(index)
    if n:
        mapped.add_with_ids(vectors, np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, np.int64))
    return mapped
