"""Multi-turn /search, server-side sessions, and Dify's External Knowledge API."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from app.sessions import SessionStore
from tests.app.conftest import API_KEY as DIFY_KEY

CHAT = [
    {"role": "user", "content": "我在医院做手术，医生事先没有告诉我手术风险和替代方案。"},
    {"role": "assistant", "content": "这种情况确实让人担心。"},
    {"role": "user", "content": "那医院要不要承担责任？"},
]


def test_messages_build_a_contextual_query(client: TestClient) -> None:
    body = client.post("/search", json={"messages": CHAT, "mode": "bm25", "top_k": 5}).json()
    assert body["query"] == "那医院要不要承担责任？"
    assert len(body["queries"]) == 1 and "手术" in body["queries"][0]  # elliptical: contextual query only
    articles = {(r["metadata"]["law"], r["metadata"]["article"]) for r in body["results"]}
    assert ("中华人民共和国民法典", "第一千二百一十九条") in articles  # 医务人员说明义务
    # BM25 scored the turns as one weighted query: the last turn at 1, the assistant's reply lightest.
    assert [p["text"] for p in body["bm25_query"]] == [m["content"] for m in CHAT]
    weights = [p["weight"] for p in body["bm25_query"]]
    assert weights[2] == 1.0 and weights[1] < weights[0] < 1.0
    last_only = client.post("/search", json={"messages": CHAT, "mode": "bm25", "dialogue_mode": "last"}).json()
    assert last_only["queries"] == ["那医院要不要承担责任？"] and last_only["bm25_query"] is None
    dense = client.post("/search", json={"messages": CHAT, "mode": "dense"}).json()
    assert dense["bm25_query"] is None and dense["queries"] == body["queries"]


def test_query_plus_messages_history(client: TestClient) -> None:
    body = client.post("/search", json={"messages": CHAT[:2], "query": CHAT[2]["content"], "mode": "bm25"}).json()
    assert body["query"] == CHAT[2]["content"] and "手术" in body["queries"][0]


def test_session_id_keeps_history(client: TestClient) -> None:
    first = client.post("/search", json={"query": CHAT[0]["content"], "session_id": "s1", "mode": "bm25"}).json()
    assert first["session_id"] == "s1" and len(first["queries"]) == 1
    second = client.post("/search", json={"query": CHAT[2]["content"], "session_id": "s1", "mode": "bm25"}).json()
    assert "手术" in second["queries"][0]
    other = client.post("/search", json={"query": CHAT[2]["content"], "session_id": "s2", "mode": "bm25"}).json()
    assert other["queries"] == [CHAT[2]["content"]]


def test_oversize_conversation_is_422_and_a_long_one_keeps_its_newest_turns(client: TestClient) -> None:
    many = [{"role": "user", "content": "医师"}] * 21
    response = client.post("/search", json={"messages": many})
    assert response.status_code == 422 and "messages" in response.json()["error"]["message"]
    assert client.post("/search", json={"messages": [{"role": "assistant", "content": "hi"}]}).status_code == 422
    # 5 x 3,999 characters: over the 16,000 a conversation may use, so the oldest turn is left out
    long = [{"role": "user", "content": f"第{i}轮" + "医师执业" * 998} for i in range(5)]
    response = client.post("/search", json={"messages": long, "mode": "bm25"})
    assert response.status_code == 200
    used = json.dumps(response.json()["bm25_query"], ensure_ascii=False)
    assert "第4轮" in used and "第1轮" in used and "第0轮" not in used


def test_session_store_bounds_and_expiry() -> None:
    clock = [0.0]
    store = SessionStore(ttl_s=10, max_messages=3, max_chars=10, max_sessions=2, clock=lambda: clock[0])
    store.extend("a", [{"role": "user", "content": "一二三四五"}] * 4)
    assert len(store.get("a")) == 2  # 3 kept by count, then 10 characters at most
    store.extend("b", [{"role": "user", "content": "x"}])
    store.extend("c", [{"role": "user", "content": "y"}])
    assert store.get("a") == [] and len(store) == 2  # least recently used evicted
    clock[0] = 11.0
    assert store.get("b") == []


def _dify(client: TestClient, auth: str | None = f"Bearer {DIFY_KEY}", **body):
    payload = {
        "knowledge_id": "sample",
        "query": "医师在执业活动中履行哪些义务",
        "retrieval_setting": {"top_k": 3, "score_threshold": 0.0},
    }
    payload.update(body)
    headers = {"Authorization": auth or ""}  # "" overrides the client's default key
    return client.post("/retrieval", json=payload, headers=headers)


def test_dify_retrieval_shape(client: TestClient) -> None:
    response = _dify(client)
    assert response.status_code == 200
    records = response.json()["records"]
    assert len(records) == 3
    for record in records:
        assert set(record) == {"content", "score", "title", "metadata"}
        assert 0.0 <= record["score"] <= 1.0 and isinstance(record["metadata"], dict)
    assert records[0]["score"] >= records[-1]["score"]


def test_dify_threshold_and_metadata_condition(client: TestClient) -> None:
    records = _dify(client, retrieval_setting={"top_k": 5, "score_threshold": 1.0}).json()["records"]
    assert all(r["score"] >= 1.0 for r in records)
    condition = {
        "logical_operator": "and",
        "conditions": [{"name": ["law"], "comparison_operator": "is", "value": "中华人民共和国药品管理法"}],
    }
    records = _dify(
        client, metadata_condition=condition, retrieval_setting={"top_k": 3, "score_threshold": 0.0}
    ).json()["records"]
    assert records and {r["metadata"]["law"] for r in records} == {"中华人民共和国药品管理法"}


def test_dify_errors(client: TestClient) -> None:
    missing = _dify(client, auth=None)
    assert missing.status_code == 403 and missing.json()["error_code"] == 1001
    wrong = _dify(client, auth="Bearer nope")
    assert wrong.status_code == 403 and wrong.json()["error_code"] == 1002
    unknown = _dify(client, knowledge_id="other-kb")
    assert unknown.status_code == 404 and unknown.json()["error_code"] == 2001
    assert _dify(client, retrieval_setting={"top_k": 0, "score_threshold": 0.0}).status_code == 422


def _condition(*conditions: dict, operator: str = "and") -> dict:
    return {"logical_operator": operator, "conditions": list(conditions)}


def test_dify_metadata_condition_is_pushed_into_retrieval(client: TestClient) -> None:
    """Filters decide the candidates of both legs: top_k matching records come back whenever they exist."""
    law = {"name": ["law"], "comparison_operator": "is", "value": "中华人民共和国医师法"}
    records = _dify(
        client, metadata_condition=_condition(law), retrieval_setting={"top_k": 5, "score_threshold": 0.0}
    ).json()["records"]
    assert len(records) == 5 and {r["metadata"]["law"] for r in records} == {"中华人民共和国医师法"}
    # An unrelated question still returns the filtered law's articles (a post-filter returned few or none).
    early = {"name": "article_no", "comparison_operator": "≤", "value": "10"}
    records = _dify(
        client,
        query="侵权责任的承担方式",
        metadata_condition=_condition(early, law),
        retrieval_setting={"top_k": 8, "score_threshold": 0.0},
    ).json()["records"]
    assert len(records) == 8
    assert all(r["metadata"]["article_no"] <= 10 and r["metadata"]["law"] == law["value"] for r in records)
    either = _condition(
        {"name": "law", "comparison_operator": "contains", "value": "药品"},
        {"name": "law", "comparison_operator": "end with", "value": "防治法"},
        operator="or",
    )
    records = _dify(client, metadata_condition=either, retrieval_setting={"top_k": 10, "score_threshold": 0.0}).json()
    laws = {r["metadata"]["law"] for r in records["records"]}
    assert len(records["records"]) == 10 and laws <= {"中华人民共和国药品管理法", "中华人民共和国传染病防治法"}
    none = {"name": "law", "comparison_operator": "is", "value": "中华人民共和国刑法"}
    assert _dify(client, metadata_condition=_condition(none)).json() == {"records": []}


def test_dify_bad_condition_is_a_dify_error(client: TestClient) -> None:
    bad = _condition({"name": 'law"', "comparison_operator": "is", "value": "x"})
    response = _dify(client, metadata_condition=bad)  # refused by the schema, in Dify's shape
    assert response.status_code == 422 and "invalid filter field" in response.json()["error_msg"]
    unknown_op = _condition({"name": "law", "comparison_operator": "like", "value": "x"})
    assert _dify(client, metadata_condition=unknown_op).status_code == 422


def test_group_by_doc_id_fills_top_k_groups(client: TestClient) -> None:
    """Every chunk of one document can outrank the others; grouping reads further until it has top_k documents."""
    # 医疗机构: the sixth document's best chunk ranks ~160th in BM25 (a window of 4 x top_k found 5 groups).
    body = {"query": "医疗机构", "mode": "bm25", "top_k": 6, "group_by": "doc_id"}
    results = client.post("/search", json=body).json()["results"]
    assert len(results) == 6 and len({r["doc_id"] for r in results}) == 6


def test_search_takes_both_filter_forms(client: TestClient) -> None:
    shorthand = {"query": "医师的义务", "mode": "bm25", "top_k": 5, "filters": {"law": "中华人民共和国医师法"}}
    conditions = {
        **shorthand,
        "filters": {"conditions": [{"name": "law", "comparison_operator": "is", "value": "中华人民共和国医师法"}]},
    }
    first, second = (client.post("/search", json=b).json()["results"] for b in (shorthand, conditions))
    assert [r["id"] for r in first] == [r["id"] for r in second] and len(first) == 5
    early = {**shorthand, "filters": {"conditions": [{"name": "article_no", "comparison_operator": "<", "value": 4}]}}
    results = client.post("/search", json=early).json()["results"]
    assert results and all(r["metadata"]["article_no"] < 4 for r in results)
