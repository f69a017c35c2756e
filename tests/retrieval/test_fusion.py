from __future__ import annotations

import pytest

from retrieval.fusion import RRF_K, reciprocal_rank_fusion


def test_rrf_scores_and_order() -> None:
    fused = dict(reciprocal_rank_fusion({"a": ["x", "y"], "b": ["y", "z"]}))
    assert fused["y"] == pytest.approx(1 / (RRF_K + 2) + 1 / (RRF_K + 1))
    assert fused["x"] == pytest.approx(1 / (RRF_K + 1))
    assert list(dict(reciprocal_rank_fusion({"a": ["x", "y"], "b": ["y", "z"]}))) == ["y", "x", "z"]


def test_rrf_weights_shift_ranking() -> None:
    rankings = {"dense": ["d1", "d2"], "bm25": ["d2", "d1"]}
    assert reciprocal_rank_fusion(rankings, weights={"dense": 2.0})[0][0] == "d1"
    assert reciprocal_rank_fusion(rankings, weights={"bm25": 2.0})[0][0] == "d2"


def test_rrf_rejects_negative_k() -> None:
    with pytest.raises(ValueError):
        reciprocal_rank_fusion({"a": ["x"]}, k=-1)
