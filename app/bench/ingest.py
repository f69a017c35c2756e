"""``zhrag bench --ingest``: ingest throughput, the CPU floor under it, and plain ``encode`` as a baseline.

The floor is the same pipeline with a zero-cost embedder (vectors of the right shape, no model): what
ingest costs when the model is free, i.e. how fast the CPU stages can feed an accelerator. It is run
with ``--workers N`` and with one worker in the same run, so their ratio is measured on one machine.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from app.bench.machine import machine_info, peak_rss_mb
from ingest.chunkers import ChunkSettings
from ingest.pipeline import IngestOptions, IngestSummary, ingest
from retrieval.embedders.base import Delegating, EmbedderBase
from retrieval.embedders.sentence_transformers import SentenceTransformerEmbedder
from retrieval.embedders.tokens import TokenSpec
from retrieval.index import Index
from retrieval.protocols import Embedder
from retrieval.text import Analyzer

__all__ = ["ZeroCostEmbedder", "run_ingest_bench", "encode_baseline"]


class ZeroCostEmbedder(Delegating):
    """Vectors of the right shape for free: the pipeline with the model taken out.

    Keeps the real embedder's tokenizer (chunk sizes and token counts stay real) and its manifest entry.
    """

    def __init__(self, inner: EmbedderBase) -> None:
        super().__init__(inner)
        self._row = np.full(inner.dim, 1 / np.sqrt(inner.dim), dtype=np.float32)

    @property
    def device(self) -> str:
        """The vectors cost nothing anywhere: counted as the CPU."""
        return "cpu"

    @property
    def token_spec(self) -> TokenSpec | None:
        """The real embedder's tokenizer."""
        return self.inner.token_spec

    def submit_queries(self, texts: Sequence[str]) -> Future[np.ndarray]:
        """Computed now."""
        return EmbedderBase.submit_queries(self, texts)

    def close(self) -> None:
        """The real embedder is its owner's to close."""
        return None  # nothing of its own

    def embed_token_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """A unit vector per input."""
        return np.broadcast_to(self._row, (len(batch), self.dim))

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """A unit vector per text."""
        return np.broadcast_to(self._row, (len(texts), self.dim))

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """A unit vector per text."""
        return self.embed_documents(texts)


def _summary(run: IngestSummary) -> dict[str, Any]:
    keys = (
        "seconds",
        "chunks",
        "tokens",
        "tokens_per_second",
        "embed_seconds",
        "embed_tokens_per_second",
        "padding_ratio",
        "batches",
        "max_batch_tokens",
        "workers",
        "devices",
    )
    return {k: getattr(run, k) for k in keys}


def encode_baseline(embedder: Embedder, texts: Sequence[str], batch_size: int) -> dict[str, Any]:
    """Plain ``SentenceTransformer.encode`` over ``texts`` (documents, no prompt) at ``batch_size``.

    Its tokens are counted as sentence-transformers itself prepares the inputs (version 6 wraps them in
    the tokenizer's chat template when there is one, so it processes a few more tokens than zhrag).
    """
    while isinstance(embedder, Delegating):  # e.g. behind an embedding cache
        embedder = embedder.inner
    if not isinstance(embedder, SentenceTransformerEmbedder):
        raise ValueError("the encode baseline needs a local sentence-transformers model")
    model = embedder.model
    tokens = _st_tokens(model, texts)
    _sync()
    start = time.perf_counter()
    model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    _sync()
    seconds = time.perf_counter() - start
    return {
        "batch_size": batch_size,
        "seconds": round(seconds, 2),
        "tokens": tokens,
        "tokens_per_second": round(tokens / seconds, 1),
    }


def _st_tokens(model: Any, texts: Sequence[str]) -> int:
    prepare = getattr(model, "preprocess", None) or model.tokenize
    total = 0
    for i in range(0, len(texts), 256):
        total += int(prepare(list(texts[i : i + 256]))["attention_mask"].sum())
    return total


def _sync() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    except ImportError:
        pass


def run_ingest_bench(
    paths: Sequence[Path],
    embedder: Embedder,
    analyzer: Analyzer,
    workers: int,
    settings: ChunkSettings | None = None,
    devices: Sequence[str] | None = None,
    max_batch_tokens: int | None = None,
    with_model: bool = True,
    encode_batches: Sequence[int] = (),
    store: dict[str, Any] | None = None,
    keep_index: Path | None = None,
) -> dict[str, Any]:
    """Ingest ``paths`` into throwaway indexes: the floor with ``workers`` and with 1, then the real run.

    Args:
        paths: Files or directories to ingest.
        embedder: The real embedder (its tokenizer is used by the floor runs too).
        analyzer: BM25 analyzer.
        workers: Workers of the floor and the real run.
        settings: Chunker settings.
        devices: Devices of the real run.
        max_batch_tokens: Batch budget of the real run.
        with_model: Also run the real pipeline (the floors alone need no model time).
        encode_batches: Batch sizes of a plain ``encode`` baseline over the same chunks, in the same run.
        store: Vector store of the indexes (e.g. ``{"backend": "numpy"}`` where FAISS is not installed).
        keep_index: Write the real run's index here (to benchmark searching it next) instead of discarding it.
    """
    zero = ZeroCostEmbedder(embedder)
    result: dict[str, Any] = {"paths": [str(p) for p in paths], "model": embedder.name, "workers": workers}
    with tempfile.TemporaryDirectory(prefix="zhrag-bench-") as tmp:
        runs = {}
        for name, count in (("floor", workers), ("floor_workers_1", 1)):
            options = IngestOptions(workers=count)
            runs[name] = ingest(
                paths, Path(tmp) / name, zero, analyzer, settings, store, progress=False, options=options
            )
        floor, single = runs["floor"], runs["floor_workers_1"]
        result.update(
            chunks=floor.chunks,
            tokens=floor.tokens,
            floor_seconds=floor.seconds,
            floor_seconds_workers_1=single.seconds,
            floor_speedup=round(single.seconds / floor.seconds, 2) if floor.seconds else None,
            floor_tokens_per_second=floor.tokens_per_second,
        )
        if with_model:
            options = IngestOptions(workers=workers, devices=devices, max_batch_tokens=max_batch_tokens)
            target = keep_index or Path(tmp) / "model"
            real = ingest(paths, target, embedder, analyzer, settings, store, progress=False, options=options)
            result["pipeline"] = _summary(real)
            if keep_index:
                result["index"] = str(keep_index)
        if encode_batches:
            index = Index(Path(tmp) / "floor")
            texts = [c.embed_text for c in index.docs.get(range(index.docs.next_rid())).values()]
            index.close()
            result["encode"] = [encode_baseline(embedder, texts, b) for b in encode_batches]
            if with_model:
                pipeline = result["pipeline"]["tokens_per_second"]
                result["pipeline_vs_encode"] = {
                    str(e["batch_size"]): round(pipeline / e["tokens_per_second"], 2) for e in result["encode"]
                }
    result["peak_rss_mb"] = peak_rss_mb()
    result["machine"] = machine_info()
    return result
