"""Which segments to merge next: a tiered policy in the manner of Lucene's ``TieredMergePolicy``, as a
pure function of the segments' sizes.

Segments are grouped into tiers by size (each tier ``factor`` times the one below, every segment smaller
than ``floor`` rows counting as ``floor``). When a tier holds ``per_tier`` segments or more, its smallest
``factor`` are merged into one of the tier above. Every row is therefore rewritten about once per tier it
climbs (logarithmic in the index's size), and the segment count stays below ``per_tier`` per tier. A
segment with more than ``max_deleted`` of its rows deleted is rewritten on its own to drop them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MergePolicy", "plan_merge"]


@dataclass(frozen=True)
class MergePolicy:
    """Attributes:
    floor: Segments below this many rows all count as this size (they merge together freely).
    factor: Size ratio between tiers, and segments merged at once.
    per_tier: Segments a tier may hold before its smallest are merged.
    max_deleted: Share of deleted rows above which a segment is rewritten.
    max_deleted_rows: Deleted rows above which a segment is rewritten whatever its size (``None``: no
        such bound; a store whose searches take a bounded list of excluded ids sets it).
    """

    floor: int = 64
    factor: int = 8
    per_tier: int = 8
    max_deleted: float = 0.3
    max_deleted_rows: int | None = None

    def tier(self, rows: int) -> int:
        """The tier of a segment of ``rows`` live rows."""
        return int(math.log(max(rows, self.floor) / self.floor, self.factor))


def plan_merge(sizes: Sequence[tuple[int, int]], policy: MergePolicy = MergePolicy()) -> list[int]:
    """The positions of the segments to merge next (empty: nothing to do).

    Args:
        sizes: Per segment, (rows written, rows deleted since).
        policy: The thresholds.
    """
    for i, (rows, deleted) in enumerate(sizes):
        too_many = policy.max_deleted_rows is not None and deleted > policy.max_deleted_rows
        if rows and (deleted / rows > policy.max_deleted or too_many):
            return [i]
    tiers: dict[int, list[int]] = {}
    for i, (rows, deleted) in enumerate(sizes):
        tiers.setdefault(policy.tier(rows - deleted), []).append(i)
    for tier in sorted(tiers):
        members = tiers[tier]
        if len(members) >= policy.per_tier:
            smallest = sorted(members, key=lambda i: (sizes[i][0] - sizes[i][1], i))[: policy.factor]
            return sorted(smallest)
    return []
