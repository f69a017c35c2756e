"""``zhrag bench``: the performance suite. Every result is JSON and names the machine it came from.

* :mod:`app.bench.queries` - search latency per mode on one index (BM25 as the same-run baseline)
* :mod:`app.bench.ingest` - ingest throughput, and the CPU floor with a zero-cost embedder
* :mod:`app.bench.http` - ``/search`` over HTTP at several concurrencies, micro-batching on and off
* :mod:`app.bench.ann` - FAISS flat vs HNSW vs IVF-PQ on synthetic vectors
"""

from __future__ import annotations

from app.bench.machine import machine_info, percentile
from app.bench.queries import run_bench

__all__ = ["machine_info", "percentile", "run_bench"]
