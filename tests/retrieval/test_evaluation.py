from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.metrics import aggregate_hits, doc_key, evaluate_run, load_qrels, truncate_run


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


def test_beir_and_trec_inputs_load_with_or_without_a_header(tmp_path) -> None:
    from retrieval.metrics import load_qrels, load_queries

    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"_id": "q1", "text": "医师的义务"}\n{"id": "q2", "text": "假药"}\n', encoding="utf-8")
    assert load_queries(queries) == {"q1": "医师的义务", "q2": "假药"}
    expected = {"q1": {"d1": 1}, "q2": {"d2": 2}}
    for name, text in {
        "with_header.tsv": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td3\t0\n",
        "no_header.tsv": "q1\td1\t1\nq2\td2\t2\n",
        "trec.txt": "q1 0 d1 1\nq2 0 d2 2\n",
    }.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        assert load_qrels(path) == expected, name


def test_a_questions_file_given_as_queries_is_named_with_the_format(tmp_path) -> None:
    import pytest

    from retrieval.metrics import load_qrels, load_queries

    questions = tmp_path / "questions.txt"
    questions.write_text("医生在执业活动中应当履行哪些义务？\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"questions\.txt:1: not JSON .*BEIR queries JSONL"):
        load_queries(questions)
    broken = tmp_path / "qrels.tsv"
    broken.write_text("query-id\tcorpus-id\tscore\nq1\td1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"qrels\.tsv:2: expected"):
        load_qrels(broken)
