"""Reciprocal Rank Fusion over ranked lists (pure functions on plain data)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

from retrieval.errors import InputError

__all__ = ["RRF_K", "reciprocal_rank_fusion"]

RRF_K = 60
"""The RRF constant of Cormack et al. (2009): score = sum_legs weight / (k + rank)."""

K = TypeVar("K", bound=Hashable)


def reciprocal_rank_fusion(
    rankings: Mapping[str, Sequence[K]],
    k: int = RRF_K,
    weights: Mapping[str, float] | None = None,
) -> list[tuple[K, float]]:
    """Fuse ranked lists with RRF.

    Args:
        rankings: Leg name -> item ids, best first (rank 1 is the first item).
        k: The RRF constant; larger flattens the advantage of top ranks.
        weights: Optional per-leg weights (default 1.0 each).

    Returns:
        (item, fused score) pairs, best first; ties keep first-seen order.
    """
    if k < 0:
        raise InputError("RRF k must be >= 0")
    fused: dict[K, float] = {}
    for leg, items in rankings.items():
        weight = 1.0 if weights is None else weights.get(leg, 1.0)
        for rank, item in enumerate(items, start=1):
            fused[item] = fused.get(item, 0.0) + weight / (k + rank)
    return sorted(fused.items(), key=lambda kv: kv[1], reverse=True)
