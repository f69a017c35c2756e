from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.evaluation import aggregate_hits, doc_key, evaluate_run, load_qrels, truncate_run


def test_metrics_match_hand_computed_values() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}}
    run = {"q1": {"x": 3.0, "a": 2.0}, "q2": {"b": 1.0}}
    m = evaluate_run(qrels, run)
    # q1: relevant at rank 2 -> RR 0.5, nDCG 1/log2(3); q2: one of two at rank 1 -> RR 1, recall 0.5
    assert m["MRR@10"] == pytest.approx((0.5 + 1.0) / 2, abs=1e-4)
    assert m["Recall@10"] == pytest.approx((1.0 + 0.5) / 2, abs=1e-4)
    ndcg_q1 = 1 / 1.5849625
    ndcg_q2 = 1 / (1 + 1 / 1.5849625)
    assert m["nDCG@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2, abs=1e-4)


def test_mrr_is_cut_at_10() -> None:
    run = {"q": {f"x{i}": 100.0 - i for i in range(10)} | {"a": 1.0}}
    assert evaluate_run({"q": {"a": 1}}, run)["MRR@10"] == 0.0
    assert evaluate_run({"q": {"a": 1}}, run)["Recall@100"] == 1.0


def test_missing_query_scores_zero() -> None:
    assert evaluate_run({"q": {"a": 1}}, {})["nDCG@10"] == 0.0


def test_aggregation_and_keys() -> None:
    hits = [("A 第一条", 0.5), ("A 第一条", 0.9), ("B 第二条", 0.7), ("", 1.0)]
    assert aggregate_hits(hits, 10) == {"A 第一条": 0.9, "B 第二条": 0.7}
    assert doc_key("{law} {article}", "d", "t", {"law": "民法典", "article": "第五条"}) == "民法典 第五条"
    assert doc_key("{doc_id}", "d1", "t", {}) == "d1"
    assert truncate_run({"q": {"a": 1, "b": 2, "c": 3}}, 2) == {"q": {"c": 3, "b": 2}}


def test_load_qrels(tmp_path: Path) -> None:
    path = tmp_path / "q.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\nq2\td3\t2\n", encoding="utf-8")
    assert load_qrels(path) == {"q1": {"d1": 1}, "q2": {"d3": 2}}
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=":2"):
        load_qrels(path)
