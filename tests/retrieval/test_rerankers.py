from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.rerankers import create_reranker, detect_reranker_type
from retrieval.rerankers.qwen3 import ASSISTANT_SUFFIX, SYSTEM_PREFIX, Qwen3Reranker, format_pair

PASSAGES = ["医师在执业活动中履行下列义务", "禁止生产、销售假药", "高血压患者要控制食盐摄入量"]


def test_detects_qwen3_checkpoints(tiny_reranker_dir: Path, tiny_cross_encoder_dir: Path) -> None:
    assert detect_reranker_type("Qwen/Qwen3-Reranker-0.6B") == "qwen3"
    assert detect_reranker_type(str(tiny_reranker_dir)) == "qwen3"
    assert detect_reranker_type(str(tiny_cross_encoder_dir)) == "cross-encoder"
    assert detect_reranker_type("BAAI/bge-reranker-v2-m3") == "cross-encoder"


def test_qwen3_reranker_scores_are_yes_probabilities(tiny_reranker_dir: Path) -> None:
    reranker = create_reranker(str(tiny_reranker_dir))
    assert isinstance(reranker, Qwen3Reranker)
    scores = reranker.score("医生有哪些义务", PASSAGES)
    assert scores.shape == (3,) and ((scores > 0) & (scores < 1)).all()
    # Batching and padding must not change a passage's score.
    single = np.array([reranker.score("医生有哪些义务", [p])[0] for p in PASSAGES])
    assert np.allclose(scores, single, atol=1e-4)


def test_qwen3_prompt_is_the_official_one() -> None:
    assert SYSTEM_PREFIX.startswith("<|im_start|>system\nJudge whether the Document meets the requirements")
    assert ASSISTANT_SUFFIX == "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert format_pair("I", "Q", "D") == "<Instruct>: I\n<Query>: Q\n<Document>: D"


def test_cross_encoder_reranker(tiny_cross_encoder_dir: Path) -> None:
    reranker = create_reranker(str(tiny_cross_encoder_dir))
    scores = reranker.score("假药", PASSAGES)
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all()
    assert len(reranker.score("假药", [])) == 0


def test_reranker_without_yes_token_is_rejected(tiny_cross_encoder_dir: Path) -> None:
    with pytest.raises(ValueError, match="yes"):
        Qwen3Reranker(str(tiny_cross_encoder_dir))
