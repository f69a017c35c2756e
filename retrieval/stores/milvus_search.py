"""Searching a Milvus collection under an id filter of any length (shared by the vector and the BM25 leg)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from retrieval.stores.base import MISSING_ID, StoreError

__all__ = ["search_in_parts", "ID_FIELD", "MAX_FILTER_IDS", "Search"]

ID_FIELD = "id"
"""The primary key of zhrag's Milvus collections: the docstore's row id."""
MAX_FILTER_IDS = 16384
_MAX_TOPK = 16384  # Milvus' largest search limit

Search = Callable[..., list[list[dict[str, Any]]]]


def search_in_parts(
    search: Search,
    n_queries: int,
    k: int,
    allowed: np.ndarray | None,
    *args: Any,
    rows: Callable[[], int] | None = None,
    excluded: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) per query from ``search(limit, expr, *args)``; ``allowed`` restricts the ids.

    Milvus takes a bounded expression. A filter longer than ``MAX_FILTER_IDS`` ids is answered, when the
    collection's row count (``rows()``, asked only then) makes it cheap, by one unfiltered search deep
    enough to expect ``k`` admitted ids among its results (kept when every query found them, or saw every
    row that matches at all), else in parts of ``MAX_FILTER_IDS`` ids whose top-``k`` lists are merged by
    score. Both are exact. ``excluded`` ids (at most ``MAX_FILTER_IDS``) are never returned.
    """
    limit = min(k, _MAX_TOPK)  # Milvus refuses deeper searches; the slots beyond stay empty
    if excluded is not None and len(excluded):
        if len(excluded) > MAX_FILTER_IDS:
            raise StoreError(f"Milvus takes at most {MAX_FILTER_IDS} excluded ids, not {len(excluded)}")
        outside = f"{ID_FIELD} not in [{','.join(map(str, np.asarray(excluded, dtype=np.int64).tolist()))}]"
        if allowed is not None:
            allowed = np.setdiff1d(np.asarray(allowed, dtype=np.int64), excluded)
        else:
            return _collect(search(limit, outside, *args), n_queries, k)
    if allowed is None:
        return _collect(search(limit, "", *args), n_queries, k)
    allowed = np.asarray(allowed, dtype=np.int64)
    if len(allowed) == 0:
        return np.full((n_queries, k), -np.inf, dtype=np.float32), np.full((n_queries, k), MISSING_ID, dtype=np.int64)
    total = rows() if rows is not None and len(allowed) > MAX_FILTER_IDS else 0
    if total:
        depth = min(total, 2 * k * total // len(allowed) + k)
        if depth <= _MAX_TOPK:
            found = _admitted(*_collect(search(depth, "", *args), n_queries, depth), allowed, k, depth >= total)
            if found is not None:
                return found
    parts = [allowed[i : i + MAX_FILTER_IDS] for i in range(0, len(allowed), MAX_FILTER_IDS)]
    found_parts = [
        _collect(search(limit, f"{ID_FIELD} in [{','.join(map(str, part.tolist()))}]", *args), n_queries, k)
        for part in parts
    ]
    if len(found_parts) == 1:
        return found_parts[0]
    scores = np.concatenate([s for s, _ in found_parts], axis=1)
    ids = np.concatenate([i for _, i in found_parts], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _admitted(
    scores: np.ndarray, ids: np.ndarray, allowed: np.ndarray, k: int, every_row: bool
) -> tuple[np.ndarray, np.ndarray] | None:
    """The first ``k`` admitted results of each row of a deeper unfiltered search; ``None`` when a row has
    fewer than ``k`` admitted ones but more results may exist beyond the depth searched (``every_row``: the
    search was as deep as the collection)."""
    admitted = np.isin(ids, allowed)
    exhausted = (ids == MISSING_ID).any(axis=1) | every_row  # it returned everything that matches
    if not ((admitted.sum(axis=1) >= k) | exhausted).all():
        return None
    out_scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
    out_ids = np.full((len(ids), k), MISSING_ID, dtype=np.int64)
    for row in range(len(ids)):
        keep = np.flatnonzero(admitted[row])[:k]
        out_scores[row, : len(keep)], out_ids[row, : len(keep)] = scores[row, keep], ids[row, keep]
    return out_scores, out_ids


def _collect(results: list[list[dict[str, Any]]], n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    ids = np.full((n_queries, k), MISSING_ID, dtype=np.int64)
    for row, hits in enumerate(results):
        for col, hit in enumerate(hits[:k]):
            scores[row, col] = hit["distance"]
            ids[row, col] = hit[ID_FIELD] if ID_FIELD in hit else hit["entity"][ID_FIELD]
    return scores, ids
