"""The BM25 leg inside Milvus: zhrag's BM25 weights in a sparse-vector collection searched by inner product.

Each chunk's row holds, per term, the weight zhrag's own BM25 gives it (``idf * tf part``, the Lucene
variant of :class:`retrieval.bm25.BM25Builder`, computed over the whole index). A query is the sparse vector
of its analysed terms with their counts (or a conversation's turn weights), so the inner product Milvus
computes *is* zhrag's BM25 score: the same analyser (jieba words, CJK bigrams, stopwords, synonyms, OpenCC),
the same global statistics, the same ranking as the local leg. An API node sends terms, never needs the
corpus's postings, and Milvus applies the filters inside the leg.

Why not Milvus' built-in BM25 function: it analyses raw text with Milvus' tokenizers (zhrag's analysis would
have to be re-encoded as text), and Milvus Lite scores it with per-segment statistics (pure Python, 3.5 s
per query over the 690 statute books when tried). The cost of precomputed weights: IDF and the average
length change with every ingest, so each published version writes its own BM25 collection in full.

Terms become sparse dimensions by a 32-bit BLAKE2b hash (no vocabulary to ship to API nodes); distinct
terms of one index that share a hash are counted when the collection is written (3 in the 141,649 terms of
the 690 statute books) and share a weight dimension.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.stores.milvus_search import ID_FIELD as _ID
from retrieval.stores.milvus_search import search_in_parts

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from retrieval.bm25 import BM25Index

__all__ = ["MilvusBM25", "term_dimension", "write_bm25_collection", "BM25_SUFFIX"]

BM25_SUFFIX = "__bm25"
_SPARSE = "bm25"
_INSERT_BATCH = 1000
_TIE_MARGIN = 16
_MAX_DIMENSION = 2**32 - 1  # reserved by Milvus' sparse protocol


def term_dimension(term: str) -> int:
    """The sparse dimension of an analysed term (stable across processes and machines)."""
    value = int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=4).digest(), "little")
    return value if value < _MAX_DIMENSION else 0


def write_bm25_collection(client: MilvusClient, name: str, index: BM25Index) -> dict[str, int]:
    """Create collection ``name`` holding every chunk's BM25 weights from ``index``; returns its statistics."""
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False)
    schema.add_field(_ID, DataType.INT64, is_primary=True)
    schema.add_field(_SPARSE, DataType.SPARSE_FLOAT_VECTOR)
    params = client.prepare_index_params()
    params.add_index(field_name=_SPARSE, index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
    client.create_collection(name, schema=schema, index_params=params)

    vocab = index.vocabulary()
    dims = np.fromiter((term_dimension(t) for t in vocab), dtype=np.int64, count=len(vocab))
    collisions = len(dims) - len(np.unique(dims))
    docs, terms, weights = index.postings_by_document()
    bounds = np.searchsorted(docs, np.arange(len(index.rids) + 1))
    rows: list[dict[str, Any]] = []
    for position, rid in enumerate(index.rids.tolist()):
        start, end = bounds[position], bounds[position + 1]
        weights_of: dict[int, float] = {}
        for dim, weight in zip(dims[terms[start:end]].tolist(), weights[start:end].tolist(), strict=True):
            weights_of[dim] = weights_of.get(dim, 0.0) + weight  # two terms on one hash share a dimension
        rows.append({_ID: rid, _SPARSE: weights_of})
        if len(rows) == _INSERT_BATCH:
            client.insert(name, rows)
            rows = []
    if rows:
        client.insert(name, rows)
    client.flush(name)
    return {"terms": len(vocab), "hash_collisions": collisions, "chunks": len(index.rids)}


class MilvusBM25:
    """Search one BM25 collection written by :func:`write_bm25_collection` (the searcher's lexical leg).

    Args:
        client: An open client of the Milvus holding the collection.
        collection: The collection's name.
    """

    location = "milvus"

    def __init__(self, client: MilvusClient, collection: str) -> None:
        self._client, self.collection = client, collection
        self._client.load_collection(collection)
        self._rows: int | None = None  # a published BM25 collection never changes

    def count(self) -> int:
        """Chunks in the collection."""
        if self._rows is None:
            self._rows = int(self._client.get_collection_stats(self.collection)["row_count"])
        return self._rows

    def search(self, tokens: Sequence[str], k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, row ids) for one tokenised query, a repeated token counting again."""
        return self.search_weighted(Counter(tokens), k, allowed)

    def search_weighted(
        self, term_weights: Mapping[str, float], k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, row ids) scoring ``sum(weight * BM25 term score)``; only positive scores."""
        query: dict[int, float] = {}
        for term, weight in term_weights.items():
            if weight > 0:
                dim = term_dimension(term)
                query[dim] = query.get(dim, 0.0) + float(weight)
        if not query or k <= 0:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        # A few more than k, then ties to the lower row id, as the local leg orders them.
        scores, rids = search_in_parts(self._search_one, 1, k + _TIE_MARGIN, allowed, query, rows=self.count)
        keep = (rids[0] >= 0) & (scores[0] > 0)
        scores, rids = scores[0][keep], rids[0][keep]
        order = np.lexsort((rids, -scores))[:k]
        return scores[order], rids[order]

    def _search_one(self, k: int, expr: str, query: dict[int, float]) -> list[list[dict[str, Any]]]:
        return self._client.search(
            self.collection,
            data=[query],
            anns_field=_SPARSE,
            limit=k,
            filter=expr,
            search_params={"metric_type": "IP"},
            output_fields=[_ID],
        )
