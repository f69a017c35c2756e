"""``zhrag bench --index``: query latency per retrieval mode on one index, with BM25 as the same-run baseline."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

from app.bench.machine import machine_info, peak_rss_mb, percentile
from app.services import Services
from retrieval.searcher import BM25, SearchOptions

__all__ = ["run_bench", "WARMUP_QUERIES", "BASELINE_MODE"]

WARMUP_QUERIES = 3
BASELINE_MODE = BM25
_P95 = 0.95


def run_bench(services: Services, queries: Sequence[str], modes: Sequence[str], top_k: int = 10) -> dict[str, Any]:
    """Time ``searcher.search`` for each query in each mode (after a warm-up); latencies in ms.

    Each mode's ``relative_to_bm25`` compares its mean latency with BM25's measured in the same run,
    so results from different machines can be compared by ratio rather than absolute time.
    """
    results: dict[str, Any] = {}
    for mode in modes:
        options = SearchOptions(top_k=top_k, mode=mode)  # type: ignore[arg-type]
        for query in queries[:WARMUP_QUERIES]:
            services.searcher.search(query, options)
        latencies = []
        for query in queries:
            start = time.perf_counter()
            services.searcher.search(query, options)
            latencies.append((time.perf_counter() - start) * 1000)
        mean = statistics.fmean(latencies)
        results[mode] = {
            "queries": len(latencies),
            "mean_ms": round(mean, 2),
            "p50_ms": round(percentile(latencies, 0.5), 2),
            "p95_ms": round(percentile(latencies, _P95), 2),
            "qps": round(1000 / mean, 1) if mean else None,
        }
    if BASELINE_MODE in results:
        base = results[BASELINE_MODE]["mean_ms"] or 1.0
        for stats in results.values():
            stats["relative_to_bm25"] = round(stats["mean_ms"] / base, 2)
    manifest = services.index.manifest
    return {
        "index": str(services.index.root),
        "model": manifest["embedder"]["model"],
        "chunks": manifest.get("counts", {}).get("chunks", 0),
        "top_k": top_k,
        "modes": results,
        "peak_rss_mb": peak_rss_mb(),
        "machine": machine_info(),
    }
