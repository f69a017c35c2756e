"""zhrag retrieval core: embedders, vector stores, BM25, fusion, reranking, multi-turn queries, the searcher.

This package imports neither ``ingest`` nor ``app``.
"""

from __future__ import annotations

__all__: list[str] = []
