"""``GET /status``, the console's routes and their headers, and the percentile arithmetic behind /status."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from app.api.observability import histogram_quantile
from app.jobs import Job
from app.services import Services
from app.settings import Settings
from app.usecases.errors import Conflict
from tests.app.conftest import serve


def test_histogram_quantile_interpolates_within_a_bucket_as_prometheus_does() -> None:
    buckets = [(0.01, 10.0), (0.05, 30.0), (0.1, 40.0), (float("inf"), 40.0)]  # cumulative
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01 + 0.04 * (20 - 10) / 20)  # 0.03
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.01)  # exactly the first bucket's bound
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.05 + 0.05 * (38 - 30) / 10)
    assert histogram_quantile(0.99, [(0.01, 1.0), (float("inf"), 2.0)]) == 0.01  # in +Inf: the last finite bound
    assert histogram_quantile(0.5, [(0.01, 0.0), (float("inf"), 0.0)]) is None


@pytest.fixture()
def keyed(services: Services):
    settings = Settings(index=services.index.root, api_keys="reader", admin_keys="admin")
    with TestClient(serve(create_app(settings, load=False), services)) as client:
        yield client


def test_the_console_is_served_without_a_key_and_only_to_its_origin(keyed: TestClient) -> None:
    assert keyed.get("/search").status_code in (401, 405)  # the API itself still wants a key
    redirect = keyed.get("/", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"] == "/console"
    page = keyed.get("/console")
    assert (
        page.status_code == 200 and "zhrag 控制台" in page.text and page.headers["content-type"].startswith("text/html")
    )
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    assert "http" not in page.text.replace("http-equiv", "")  # nothing loaded from elsewhere
    script = keyed.get("/console/console.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "fetch(" in script.text and "innerHTML" not in script.text  # server text is set as text, never HTML
    assert keyed.get("/console/../settings.py").status_code == 404
    assert keyed.get("/console/index.html").status_code == 404  # only the page, its script and its style


def test_status_needs_a_key_and_reports_what_is_served(keyed: TestClient, services: Services) -> None:
    assert keyed.get("/status").status_code == 401
    reader = {"Authorization": "Bearer reader"}
    for _ in range(3):
        assert keyed.post("/search", json={"query": "医师的义务", "mode": "bm25"}, headers=reader).status_code == 200
    body = keyed.get("/status", headers=reader).json()
    (base,) = body["kbs"]
    assert base["version"] == services.index.version and base["store"] == "faiss" and base["bm25"] == "local"
    assert base["chunks"] == services.index.docs.count() and base["model_loaded"]
    (search,) = [r for r in body["latency"] if r["route"] == "/search"]
    assert search["requests"] == 3 and 0 < search["p50_ms"] <= search["p95_ms"] <= search["p99_ms"]
    assert body["microbatch"]["enabled"] and body["microbatch"]["max_texts"] == 64 and body["jobs"] == []


def test_status_shows_a_write_in_progress(keyed: TestClient, services: Services) -> None:
    release = threading.Event()
    kb = services.index.root.name

    def write(_cancel: threading.Event) -> dict:
        release.wait(30)
        raise Conflict("stands for a write; publishes nothing (the module's index is shared)")

    job = keyed.app.state.jobs.submit(Job("add", 10, write, kb=kb))
    try:
        deadline = time.monotonic() + 10
        while job.state != "running" and time.monotonic() < deadline:
            time.sleep(0.02)
        jobs = keyed.get("/status", headers={"Authorization": "Bearer reader"}).json()["jobs"]
        assert [(j["id"], j["kind"], j["kb"], j["state"]) for j in jobs] == [(job.id, "add", kb, "running")]
    finally:
        release.set()
        job.done.wait(10)
    assert keyed.get("/status", headers={"Authorization": "Bearer reader"}).json()["jobs"] == []
