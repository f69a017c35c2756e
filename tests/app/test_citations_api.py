"""Citations in ``/search`` (the cited article first) and ``POST /citations/verify``."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.api import create_app
from app.services import build_services
from app.settings import Settings
from tests.app.conftest import serve


def test_a_cited_article_comes_first_in_every_mode(client: TestClient) -> None:
    for mode in ("hybrid", "dense", "bm25"):
        body = client.post("/search", json={"query": "民法典第1165条怎么规定的", "mode": mode, "top_k": 5}).json()
        first = body["results"][0]
        assert first["match"] == "citation" and first["metadata"]["article"] == "第一千一百六十五条"
        assert first["metadata"]["law"] == "中华人民共和国民法典"
        assert all(r["match"] == "retrieval" for r in body["results"][1:])
        assert body["citations"] == [
            {
                "law": "中华人民共和国民法典",
                "law_text": "民法典",
                "article": "第一千一百六十五条",
                "paragraph": None,
                "item": None,
                "span": [0, 9],
                "found": True,
                "reason": None,
                "version": "2021-01-01",  # from the book's own 施行 line
                "newer_version": None,
                "title": None,
                "replaced_by": None,
            }
        ]


def test_a_citation_inside_a_conversation_and_with_expand(client: TestClient) -> None:
    messages = [
        {"role": "user", "content": "我在医院被误诊了。"},
        {"role": "assistant", "content": "可以看看侵权责任的规定。"},
        {"role": "user", "content": "《医师法》第二十三条怎么说？"},
    ]
    body = client.post("/search", json={"messages": messages, "mode": "bm25", "expand": "article"}).json()
    assert body["results"][0]["match"] == "citation" and body["results"][0]["metadata"]["article"] == "第二十三条"


def test_an_invented_article_forces_nothing_and_says_so(client: TestClient, services) -> None:
    query = {"query": "医师法第九十九条规定了什么", "mode": "bm25", "top_k": 5}
    body = client.post("/search", json=query).json()
    assert [c["found"] for c in body["citations"]] == [False] and "no such article" in body["citations"][0]["reason"]
    assert all(r["match"] == "retrieval" for r in body["results"])


def test_no_citation_behaves_exactly_as_before(sample_index: Path, services) -> None:
    plain = build_services(Settings(index=sample_index, citations=False))
    try:
        app = create_app(Settings(index=sample_index), load=False)
        serve(app, services)
        with TestClient(app) as c:
            for mode in ("hybrid", "bm25"):
                query = {"query": "医疗机构泄露患者隐私要承担什么责任", "mode": mode, "top_k": 8}
                with_citations = c.post("/search", json=query).json()
                serve(app, plain)
                without = c.post("/search", json=query).json()
                serve(app, services)
                assert [r["id"] for r in with_citations["results"]] == [r["id"] for r in without["results"]]
                assert with_citations["citations"] == []
    finally:
        plain.close()


def test_verify_an_answer(client: TestClient) -> None:
    answer = (
        "根据《民法典》第一千一百六十五条，行为人因过错侵害他人民事权益造成损害的，应当承担侵权责任；"
        "另见医师法第九十九条和《医疗纠纷处理法》第三条，以及刑法第三百三十五条。"
    )
    response = client.post("/citations/verify", json={"text": answer})
    assert response.status_code == 200
    citations = response.json()["citations"]
    assert [(c["law_text"], c["article"], c["found"]) for c in citations] == [
        ("民法典", "第一千一百六十五条", True),
        ("医师法", "第九十九条", False),
        ("医疗纠纷处理法", "第三条", False),
        ("刑法", "第三百三十五条", False),
    ]
    first, second, third, fourth = citations
    assert "过错侵害他人民事权益" in first["text"] and first["chunk_id"] and first["index_version"].startswith("v-")
    assert answer[first["span"][0] : first["span"][1]] == "《民法典》第一千一百六十五条"
    assert second["reason"].startswith("no such article") and second["text"] is None
    assert third["reason"] == "unknown law" and third["law"] is None
    assert (fourth["reason"], fourth["title"]) == ("law not in index", "中华人民共和国刑法")
    assert client.post("/citations/verify", json={"text": ""}).status_code == 422
