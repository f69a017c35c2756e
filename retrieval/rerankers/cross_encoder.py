"""Cross-encoder reranking (e.g. BAAI/bge-reranker-v2-m3) through sentence-transformers ``CrossEncoder``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["CrossEncoderReranker", "DEFAULT_RERANK_MAX_LENGTH"]

DEFAULT_RERANK_MAX_LENGTH = 512
DEFAULT_RERANK_BATCH = 16


class CrossEncoderReranker:
    """Score (query, passage) pairs with a sequence-classification model; sigmoid scores in [0, 1]."""

    def __init__(
        self,
        model: str,
        device: str | None = None,
        max_length: int = DEFAULT_RERANK_MAX_LENGTH,
        batch_size: int = DEFAULT_RERANK_BATCH,
    ) -> None:
        from sentence_transformers import CrossEncoder

        self.name = model
        self.batch_size = batch_size
        self._model = CrossEncoder(model, device=device, max_length=max_length)

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """Relevance per passage (higher = more relevant)."""
        if not passages:
            return np.zeros(0, dtype=np.float32)
        scores = self._model.predict(
            [(query, p) for p in passages],
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return np.asarray(scores, dtype=np.float32).reshape(len(passages), -1)[:, -1]
