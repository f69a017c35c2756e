from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from app.services import Services
from app.settings import Settings
from retrieval.searcher import SearchOptions
from tests.app.conftest import serve

LAW = "中华人民共和国医师法"


def test_health_and_ready(client: TestClient, sample_index: Path) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    app = create_app(Settings(index=sample_index), load=True)
    with TestClient(app) as real:
        body = real.get("/ready").json()
        assert body["status"] == "ready" and body["model_loaded"] and body["chunks"] > 300
        assert body["index"] == sample_index.name and body["version"].startswith("v-") and "/" not in body["index"]
        assert body["store"] == "faiss" and body["bm25"] == "local" and body["domain"] == "legal"
    missing = create_app(Settings(index=sample_index.parent / "nope"), load=True)
    with TestClient(missing) as broken:
        response = broken.get("/ready")
        assert response.status_code == 503 and "no zhrag index" in response.json()["reason"]
        assert broken.post("/search", json={"query": "医师"}).status_code == 503


def test_search_returns_passages_with_metadata(client: TestClient) -> None:
    response = client.post("/search", json={"query": "医师在执业活动中履行哪些义务", "top_k": 3, "mode": "bm25"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"results", "query", "queries", "took_ms", "mode"}
    assert len(body["results"]) == 3
    first = body["results"][0]
    assert set(first) >= {"id", "doc_id", "text", "score", "title", "source", "metadata", "ranks", "leg_scores"}
    assert first["ranks"] == {"bm25": 1} and first["leg_scores"]["bm25"] == first["score"]
    assert (LAW, "第二十三条") in {(r["metadata"]["law"], r["metadata"]["article"]) for r in body["results"]}


def test_search_filters_and_hybrid(client: TestClient) -> None:
    body = client.post("/search", json={"query": "义务", "top_k": 5, "filters": {"law": LAW}}).json()
    assert body["results"] and {r["metadata"]["law"] for r in body["results"]} == {LAW}
    assert body["mode"] == "hybrid"


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"query": "医师", "top_k": 0}, "top_k"),
        ({"query": "医师", "top_k": 101}, "top_k"),
        ({"query": ""}, "query"),
        ({"top_k": 3}, "query"),
        ({"query": "医师", "mode": "fuzzy"}, "mode"),
        ({"query": "医师", "unknown": 1}, "unknown"),
        ({"query": "医师", "filters": {"bad key!": "x"}}, "filter field"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role"),
    ],
)
def test_search_validation_errors_are_422_with_message(client: TestClient, payload: dict, fragment: str) -> None:
    response = client.post("/search", json=payload)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error" and fragment in error["message"]
    assert all("input" not in d for d in error.get("detail", []))  # never echoes the request


def test_search_rerank_without_reranker_is_400(client: TestClient) -> None:
    response = client.post("/search", json={"query": "医师", "rerank": True})
    assert response.status_code == 400 and "reranker" in response.json()["error"]["message"]


def test_embed_endpoints(client: TestClient, services: Services) -> None:
    one = client.post("/embed", json={"text": "医师的义务"}).json()
    assert one["dim"] == services.embedder.dim and len(one["embedding"]) == one["dim"]
    many = client.post("/embed", json={"texts": ["医师", "假药"], "input_type": "query"}).json()
    assert len(many["embeddings"]) == 2
    assert np.allclose(many["embeddings"][0], services.embedder.embed_queries(["医师"])[0], atol=1e-5)
    assert client.post("/embed", json={}).status_code == 422

    oa = client.post("/v1/embeddings", json={"input": ["医师", "假药"], "model": "zhrag"}).json()
    assert oa["object"] == "list" and [d["index"] for d in oa["data"]] == [0, 1]
    assert np.allclose(oa["data"][0]["embedding"], services.embedder.embed_documents(["医师"])[0], atol=1e-5)
    assert oa["usage"]["prompt_tokens"] > 0
    small = client.post("/v1/embeddings", json={"input": "医师", "dimensions": 16, "encoding_format": "base64"}).json()
    vec = np.frombuffer(base64.b64decode(small["data"][0]["embedding"]), dtype="<f4")
    assert vec.shape == (16,) and np.isclose(np.linalg.norm(vec), 1.0, atol=1e-5)
    assert client.post("/v1/embeddings", json={"input": "x", "dimensions": 100000}).status_code == 422
    assert client.post("/v1/embeddings", json={"input": []}).status_code == 422


def test_openapi_docs(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/embed", "/v1/embeddings", "/retrieval", "/health", "/ready"} <= set(paths)
    page = client.get("/docs")
    assert page.status_code == 200
    # Air-gapped networks: every script and stylesheet of the page is served by zhrag itself.
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page.text)
    assert len(assets) == 2 and not any("://" in a for a in assets)
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200 and len(served.content) > 10_000


def test_serving_without_model_degrades_to_bm25(sample_index: Path) -> None:
    with TestClient(create_app(Settings(index=sample_index, load_model=False))) as client:
        assert client.get("/ready").json()["model_loaded"] is False
        body = client.post("/search", json={"query": "医师的义务"}).json()
        assert body["mode"] == "bm25" and body["results"]
        dense = client.post("/search", json={"query": "医师的义务", "mode": "dense"})
        assert dense.status_code == 400 and "embedding model" in dense.json()["error"]["message"]
        assert client.post("/embed", json={"text": "医师"}).status_code == 503


def test_topic_similarity_setting_wires_the_embedder(sample_index: Path) -> None:
    from app.services import build_services

    services = build_services(Settings(index=sample_index, topic_min_similarity=1.01))
    msgs = [
        {"role": "user", "content": "我在医院做了手术。"},
        {"role": "assistant", "content": "好的。"},
        {"role": "user", "content": "医生没有告诉我风险。"},
        {"role": "assistant", "content": "明白。"},
        {"role": "user", "content": "那要不要赔？"},
    ]
    # No two different turns reach cosine 1.01: only the most recent earlier turn stays in context.
    assert services.dialogue.build(msgs).context_turns == ["医生没有告诉我风险。"]
    assert build_services(Settings(index=sample_index)).dialogue.build(msgs).context_turns == [
        "我在医院做了手术。",
        "医生没有告诉我风险。",
    ]


def test_concurrent_searches(client: TestClient) -> None:
    from concurrent.futures import ThreadPoolExecutor

    queries = ["医师的义务", "假药", "患者隐私", "传染病疫情报告", "医疗损害责任"] * 8

    def run(q: str) -> int:
        response = client.post("/search", json={"query": q, "top_k": 3, "expand": "article"})
        return response.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(run, queries)) == {200}


def test_served_app_microbatches_concurrent_searches(sample_index: Path) -> None:
    """The real lifespan (micro-batcher + query cache, warm-up) answers concurrent requests exactly as a
    plain searcher does, and its embedding worker really batched them."""
    from concurrent.futures import ThreadPoolExecutor

    from app.services import build_services
    from retrieval.embedders.microbatch import MicroBatcher, QueryCache, batcher_of

    queries = ["医师的义务", "假药", "患者隐私", "传染病疫情报告", "医疗损害责任", "药品广告", "执业注册"] * 6
    plain = build_services(Settings(index=sample_index))
    expected = {q: [h.chunk.id for h in plain.searcher.search(q, SearchOptions(top_k=5)).hits] for q in set(queries)}
    with TestClient(create_app(Settings(index=sample_index, microbatch_wait_ms=5))) as served:
        services = served.app.state.bases.any_services()
        batcher = batcher_of(services.embedder)
        assert isinstance(services.embedder, QueryCache) and isinstance(batcher, MicroBatcher)

        def ids(q: str) -> list[str]:
            response = served.post("/search", json={"query": q, "top_k": 5, "mode": "hybrid"})
            assert response.status_code == 200
            return [r["id"] for r in response.json()["results"]]

        with ThreadPoolExecutor(max_workers=12) as pool:
            got = list(pool.map(ids, queries))
        batches = batcher.batch_sizes
    assert got == [expected[q] for q in queries]
    assert max(batches) > 1  # concurrent queries shared forward passes
    assert not batcher.running  # the lifespan stopped the workers


@pytest.mark.parametrize("path", ["/search", "/embed", "/v1/embeddings", "/retrieval"])
def test_wrong_content_type_is_415_and_bad_json_422_never_500(client: TestClient, path: str) -> None:
    """``curl -d '{...}'`` sends form encoding: a clear 415, in Dify's shape on /retrieval."""
    body = b'{"query": "\xe5\x8c\xbb\xe5\xb8\x88", "text": "x", "input": "x"}'
    form = client.post(path, content=body, headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415
    message = form.json()["error_msg"] if path == "/retrieval" else form.json()["error"]["message"]
    assert "application/json" in message
    broken = client.post(path, content=b"{not json" + b"x" * 100_000, headers={"content-type": "application/json"})
    assert broken.status_code == 422 and len(broken.content) < 2000  # no echo of a large body


def test_unknown_route_and_unexpected_errors_have_the_error_shape(sample_index: Path, services) -> None:
    app = serve(create_app(Settings(index=sample_index), load=False), services)

    def broken(_name: str) -> None:
        raise RuntimeError("disk on fire")

    app.state.bases.lease = broken
    with TestClient(app, raise_server_exceptions=False) as c:
        missing = c.get("/nowhere")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        failed = c.post("/search", json={"query": "医师"})
        assert failed.status_code == 500 and failed.json() == {
            "error": {"code": "internal_error", "message": "internal error; the server log has the details"}
        }


def test_openapi_documents_errors_and_the_dify_response(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    search = spec["paths"]["/search"]["post"]["responses"]
    assert {"415", "422", "503"} <= set(search) and "ErrorResponse" in str(search["422"])
    dify = spec["paths"]["/retrieval"]["post"]["responses"]
    assert "DifyRetrievalResponse" in str(dify["200"]) and "DifyError" in str(dify["403"])


def test_api_keys_guard_every_route_but_the_probes(services: Services, sample_index: Path) -> None:
    app = create_app(Settings(index=sample_index, api_keys="k1, k2"), load=False)  # comma-separated works
    serve(app, services)
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        missing = c.post("/search", json={"query": "医师"})
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["code"] == "unauthorized"
        assert c.post("/search", json={"query": "医师"}, headers={"Authorization": "Bearer k3"}).status_code == 403
        assert c.post("/search", json={"query": "医师"}, headers={"Authorization": "Bearer k2"}).status_code == 200
        spec = c.get("/openapi.json")  # the API reference is open: it shows routes, not data
        assert spec.status_code == 200 and c.get("/docs").status_code == 200
        assert spec.json()["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"  # Authorize button
        assert c.get("/metrics").status_code == 401
        embed = c.post("/v1/embeddings", json={"input": "医师"}, headers={"Authorization": "Bearer k1"})
        assert embed.status_code == 200
        dify = c.post("/retrieval", json={"knowledge_id": "x", "query": "q", "retrieval_setting": {"top_k": 1}})
        assert dify.status_code == 403 and dify.json()["error_code"] == 1001  # Dify's own shape


def test_size_limits_answer_4xx(services: Services, sample_index: Path) -> None:
    app = create_app(Settings(index=sample_index, max_body_bytes=50_000), load=False)
    serve(app, services)
    with TestClient(app) as c:
        big = c.post("/v1/embeddings", json={"input": ["医" * 10_000] * 4})
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
        filters = {f"k{i}": "v" for i in range(1000)}
        many = c.post("/search", json={"query": "医师", "filters": filters})
        assert many.status_code == 422 and "at most 32" in many.json()["error"]["message"]
        assert c.post("/embed", json={"texts": ["医师", "  "]}).status_code == 422
        assert c.post("/v1/embeddings", json={"input": [""]}).status_code == 422
        long = c.post("/v1/embeddings", json={"input": ["医" * 3_000]})  # under the body limit, over the model's
        assert long.status_code == 200 and long.json()["usage"]["prompt_tokens"] > 0


def test_long_inputs_are_clipped_before_tokenising(services: Services) -> None:
    embedder = services.embedder
    spec = embedder.token_spec
    short = "第一条 " + "医" * (spec.max_length * 2)
    huge = short + "师" * 1_000_000
    assert np.allclose(embedder.embed_documents([huge]), embedder.embed_documents([short]), atol=1e-5)


def test_lone_surrogates_in_requests_are_not_a_500(client: TestClient) -> None:
    for path, body in (
        ("/search", b'{"query": "\\ud800\\u533b\\u5e08"}'),
        ("/search", b'{"query": "\\u533b\\u5e08\\udfff", "mode": "bm25"}'),
        ("/v1/embeddings", b'{"input": ["\\ud800\\u533b"]}'),
        ("/embed", b'{"texts": ["\\udc00x"], "input_type": "query"}'),
    ):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        # Either refused as invalid text, naming the field, or embedded with U+FFFD in its place; never a 500.
        assert response.status_code in (200, 422), (path, response.text)
        if response.status_code == 422:
            assert "unicode" in response.json()["error"]["message"]


def test_request_ids_metrics_and_json_logs(sample_index: Path, caplog) -> None:
    import json as _json
    import logging

    from app.api.observability import JsonFormatter, RequestIdFilter

    with TestClient(create_app(Settings(index=sample_index, microbatch_wait_ms=1))) as served:
        first = served.post("/search", json={"query": "医师的义务", "mode": "hybrid"})
        assert first.status_code == 200 and len(first.headers["x-request-id"]) == 32
        mine = served.post("/search", json={"query": "假药"}, headers={"X-Request-ID": "chat-42"})
        assert mine.headers["x-request-id"] == "chat-42"
        assert served.post("/search", json={}).status_code == 422
        text = served.get("/metrics").text
    kb = sample_index.name  # requests are counted per knowledge base once their base is known
    assert f'zhrag_requests_total{{kb="{kb}",method="POST",route="/search",status="200"}} 2.0' in text
    assert 'zhrag_requests_total{kb="",method="POST",route="/search",status="422"} 1.0' in text
    assert f'zhrag_request_seconds_count{{kb="{kb}",route="/search"}} 2.0' in text
    assert f'zhrag_index_chunks{{kb="{kb}"}} ' in text and f'zhrag_index_version_info{{kb="{kb}",model="' in text
    assert "zhrag_embed_batch_texts_count" in text and "zhrag_embed_batch_texts_count 0.0" not in text
    record = logging.LogRecord("zhrag", logging.INFO, __file__, 1, "hello %s", ("世界",), None)
    RequestIdFilter().filter(record)
    line = _json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello 世界" and line["request_id"] == "-" and line["level"] == "INFO"


def test_the_openai_sdk_gets_query_and_document_embeddings(client: TestClient, services: Services) -> None:
    """The official client, as a chatbot would use it (it asks for base64 by default)."""
    from openai import OpenAI

    sdk = OpenAI(base_url=f"{client.base_url}/v1", api_key="secret", http_client=client, max_retries=0)
    assert {m.id for m in sdk.models.list().data} == {"zhrag", "zhrag-query"}
    texts = ["医师在执业活动中应当履行哪些义务？", "禁止生产、销售假药"]
    queries = sdk.embeddings.create(model="zhrag-query", input=texts)
    documents = sdk.embeddings.create(model="zhrag", input=texts)
    got_q = np.array([d.embedding for d in queries.data])
    got_d = np.array([d.embedding for d in documents.data])
    assert np.allclose(got_q, services.embedder.embed_queries(texts), atol=1e-5)
    assert np.allclose(got_d, services.embedder.embed_documents(texts), atol=1e-5)
    assert documents.usage.prompt_tokens > len(texts)
    big = sdk.embeddings.create(model="zhrag", input=[f"第{i}条 医师的义务" for i in range(1000)])  # LangChain's batch
    assert len(big.data) == 1000
