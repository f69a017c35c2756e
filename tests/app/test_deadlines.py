"""Per-request time limit, cancellation when the client goes away, and CORS."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fastapi.testclient import TestClient

from app.api import create_app
from app.api.limits import Deadline
from app.api.routes_embed import EMBED_PIECE, _embed
from app.services import Services
from app.settings import Settings
from retrieval.embedders.microbatch import MicroBatcher
from tests.app.conftest import serve


def _client(services: Services, sample_index: Path, **settings) -> TestClient:
    app = create_app(Settings(index=sample_index, **settings), load=False)
    serve(app, services)
    return TestClient(app)


def test_a_request_over_the_time_limit_is_504_in_the_error_shape(services: Services, sample_index: Path) -> None:
    with _client(services, sample_index, request_timeout_s=0.0001) as c:
        response = c.post("/search", json={"query": "医师的执业义务", "mode": "hybrid"})
        assert response.status_code == 504
        error = response.json()["error"]
        assert error["code"] == "timeout" and "ZHRAG_REQUEST_TIMEOUT_S" in error["message"]
        assert response.headers["x-request-id"]
    with _client(services, sample_index, request_timeout_s=30) as c:
        assert c.post("/search", json={"query": "医师的执业义务"}).status_code == 200


def test_a_client_that_goes_away_cancels_its_request() -> None:
    """The app's work is cancelled at the disconnect, and nothing is sent to the gone client."""
    state = {"cancelled": False, "sent": []}

    async def slow_app(scope, receive, send) -> None:
        await receive()  # the body
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise

    async def main() -> float:
        messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive():
            if messages:
                return messages.pop()
            await asyncio.sleep(0.05)  # the client hangs up 50 ms later
            return {"type": "http.disconnect"}

        async def send(message) -> None:
            state["sent"].append(message)

        start = time.perf_counter()
        await Deadline(slow_app, timeout_s=60)({"type": "http", "method": "POST", "path": "/embed"}, receive, send)
        return time.perf_counter() - start

    took = asyncio.run(main())
    assert state["cancelled"] and state["sent"] == [] and took < 5


def test_cancelled_embedding_requests_drop_their_queued_pieces(tiny_embedder) -> None:
    batcher = MicroBatcher(tiny_embedder)
    texts = [f"第{i}条 医师应当遵守执业规范，尊重患者。" for i in range(EMBED_PIECE * 20)]

    async def main() -> None:
        task = asyncio.ensure_future(_embed(batcher, texts, as_query=False))
        while not batcher.batch_sizes:
            await asyncio.sleep(0.001)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await asyncio.sleep(0.3)

    try:
        asyncio.run(main())
        assert 0 < sum(batcher.batch_sizes) < len(texts) // 2
    finally:
        batcher.close()


def test_cors_is_off_by_default_and_answers_preflights_when_configured(services: Services, sample_index: Path) -> None:
    preflight = {"Origin": "https://chat.example.cn", "Access-Control-Request-Method": "POST"}
    with _client(services, sample_index) as c:
        plain = c.post("/search", json={"query": "医师"}, headers={"Origin": "https://chat.example.cn"})
        assert "access-control-allow-origin" not in plain.headers
    with _client(services, sample_index, cors_origins="https://chat.example.cn", api_keys="k") as c:
        answer = c.options("/search", headers={**preflight, "Access-Control-Request-Headers": "authorization"})
        assert answer.status_code == 200  # no key needed for a preflight
        assert answer.headers["access-control-allow-origin"] == "https://chat.example.cn"
        search = c.post(
            "/search",
            json={"query": "医师"},
            headers={"Origin": "https://chat.example.cn", "Authorization": "Bearer k"},
        )
        assert search.status_code == 200 and search.headers["access-control-allow-origin"] == "https://chat.example.cn"
        other = c.options("/search", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_bulk_embedding_requests_are_limited_per_key_and_queries_are_not(services: Services, sample_index) -> None:
    with _client(services, sample_index, api_keys="k1,k2") as c:
        slots = c.app.state.bulk_slots
        k1 = {"Authorization": "Bearer k1"}
        bulk = {"input": [f"第{i}条 医师应当遵守执业规范。" for i in range(20)]}
        k1_name = c.app.state.access.grant_for("k1").name
        with slots.hold(k1_name), slots.hold(k1_name):  # k1 has two bulk requests running
            refused = c.post("/v1/embeddings", json=bulk, headers=k1)
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert "ZHRAG_MAX_BULK_PER_KEY" in refused.json()["error"]["message"]
            query = {"input": ["医师有哪些义务？"], "input_type": "query"}
            assert c.post("/v1/embeddings", json=query, headers=k1).status_code == 200  # a question is no bulk
            assert c.post("/v1/embeddings", json=bulk, headers={"Authorization": "Bearer k2"}).status_code == 200
        assert c.post("/v1/embeddings", json=bulk, headers=k1).status_code == 200
