"""``zhrag bench --ann N``: FAISS flat vs HNSW vs IVF-PQ on N synthetic normalised vectors.

Uniformly random vectors in 1024 dimensions have no neighbourhoods worth the name; embeddings do. Two
generators, queries always fresh points from the same distribution:

* ``mixture`` (default): a Gaussian mixture on the unit sphere, N / 100 cluster centres, each point a
  centre plus isotropic noise (cosine to its centre ~0.74), like passages grouped by topic;
* ``lowrank``: Gaussian points of intrinsic dimension 64 mapped linearly into ``dim`` dimensions, plus a
  little isotropic noise; no clusters, neighbours spread out: the harder case for graph search.

Recall@k is measured against exact search over the same data; latency is per single query on one thread,
as a request sees it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from app.bench.machine import machine_info, percentile
from retrieval.embedders import normalize_rows
from retrieval.stores.faiss import AnnParams, build_ann

__all__ = ["run_ann_bench", "synthetic_vectors", "LAYOUTS", "DATASETS"]

LAYOUTS = ("flat", "hnsw", "ivfpq")
DATASETS = ("mixture", "lowrank")
POINTS_PER_CLUSTER = 100
MIXTURE_NOISE = 0.9
LATENT_DIM = 64
LOWRANK_NOISE = 0.3
_CHUNK = 65536


def synthetic_vectors(
    n: int, dim: int, queries: int, data: str = "mixture", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, queries) from one of :data:`DATASETS`, L2-normalised float32."""
    rng = np.random.default_rng(seed)
    if data == "mixture":
        centres = normalize_rows(rng.standard_normal((max(1, n // POINTS_PER_CLUSTER), dim), dtype=np.float32))

        def draw(m: int) -> np.ndarray:
            picks = centres[rng.integers(0, len(centres), size=m)]
            return picks + MIXTURE_NOISE / np.sqrt(dim) * rng.standard_normal((m, dim), dtype=np.float32)

    elif data == "lowrank":
        basis = rng.standard_normal((LATENT_DIM, dim), dtype=np.float32) / np.sqrt(LATENT_DIM)

        def draw(m: int) -> np.ndarray:
            latent = rng.standard_normal((m, LATENT_DIM), dtype=np.float32) @ basis
            return latent + LOWRANK_NOISE / np.sqrt(dim) * rng.standard_normal((m, dim), dtype=np.float32)

    else:
        raise ValueError(f"unknown synthetic data {data!r}; choose one of {DATASETS}")

    def sample(count: int) -> np.ndarray:
        out = np.empty((count, dim), dtype=np.float32)
        for start in range(0, count, _CHUNK):
            m = min(_CHUNK, count - start)
            out[start : start + m] = normalize_rows(draw(m))
        return out

    return sample(n), sample(queries)


def _latencies(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[float]]:
    found = np.empty((len(queries), k), dtype=np.int64)
    times = []
    for i, q in enumerate(queries):
        start = time.perf_counter()
        _, ids = index.search(q[None], k)
        times.append((time.perf_counter() - start) * 1000)
        found[i] = ids[0]
    return found, times


def run_ann_bench(
    n: int,
    dim: int = 1024,
    queries: int = 500,
    k: int = 10,
    layouts: Sequence[str] = LAYOUTS,
    params: AnnParams | None = None,
    data: str = "mixture",
    threads: int = 1,
) -> dict[str, Any]:
    """Build each layout over the same synthetic vectors and compare it with exact search.

    Args:
        n: Vectors indexed.
        dim: Their dimension.
        queries: Queries timed (one at a time).
        k: Neighbours per query (recall@k).
        layouts: Which layouts to build.
        params: HNSW / IVF-PQ parameters (zhrag's defaults when ``None``).
        data: Which synthetic distribution (:data:`DATASETS`).
        threads: FAISS threads while searching (builds use all cores).
    """
    import faiss

    params = params or AnnParams()
    vectors, qs = synthetic_vectors(n, dim, queries, data)
    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    _, truth = exact.search(qs, k)
    del exact
    result: dict[str, Any] = {
        "n": n,
        "dim": dim,
        "queries": queries,
        "k": k,
        "data": data,
        "params": dataclasses.asdict(params),
        "search_threads": threads,
        "layouts": {},
    }
    build_threads = faiss.omp_get_max_threads()
    for layout in layouts:
        faiss.omp_set_num_threads(build_threads)
        start = time.perf_counter()
        index = build_ann(layout, vectors, params)
        build_s = time.perf_counter() - start
        faiss.omp_set_num_threads(threads)
        found, times = _latencies(index, qs, k)
        recall = float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth, strict=True)]))
        result["layouts"][layout] = {
            "recall_at_k": round(recall, 4),
            "p50_ms": round(percentile(times, 0.5), 3),
            "p99_ms": round(percentile(times, 0.99), 3),
            "build_s": round(build_s, 1),
            "memory_mb": round(faiss.serialize_index(index).nbytes / 2**20, 1),
        }
        del index
    faiss.omp_set_num_threads(build_threads)
    flat = result["layouts"].get("flat")
    if flat:
        for stats in result["layouts"].values():
            stats["p99_speedup_vs_flat"] = round(flat["p99_ms"] / stats["p99_ms"], 1) if stats["p99_ms"] else None
    result["machine"] = machine_info()
    return result
