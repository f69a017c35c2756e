"""Second-stage rerankers: sentence-transformers ``CrossEncoder`` models and Qwen3-Reranker (causal LM)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from retrieval.protocols import Reranker

__all__ = ["create_reranker", "detect_reranker_type", "RerankerType"]

RerankerType = Literal["auto", "cross-encoder", "qwen3"]


def detect_reranker_type(model: str) -> str:
    """``qwen3`` for Qwen3-Reranker ids or local causal-LM checkpoints, else ``cross-encoder``."""
    if "qwen3-reranker" in model.lower():
        return "qwen3"
    config = Path(model) / "config.json"
    if config.is_file():
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
        if any(a.endswith("ForCausalLM") for a in architectures):
            return "qwen3"
    return "cross-encoder"


def create_reranker(model: str, kind: RerankerType = "auto", **options: object) -> Reranker:
    """Load a reranker; scores are higher-is-more-relevant probabilities in [0, 1].

    Args:
        model: Hub id or local directory.
        kind: ``auto`` detects Qwen3-Reranker checkpoints.
        **options: Passed to the reranker class (``device``, ``max_length``, ``instruction``, ...).
    """
    kind = detect_reranker_type(model) if kind == "auto" else kind
    if kind == "qwen3":
        from retrieval.rerankers.qwen3 import Qwen3Reranker

        return Qwen3Reranker(model, **options)  # type: ignore[arg-type]
    from retrieval.rerankers.cross_encoder import CrossEncoderReranker

    return CrossEncoderReranker(model, **options)  # type: ignore[arg-type]
