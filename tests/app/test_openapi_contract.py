"""The API contract: the OpenAPI document is whole, the schema refuses what the server refuses (so clients
generated from it agree), errors read plainly, and schemathesis' every check passes on a live server."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.access import key_hash
from app.api import create_app
from app.bench.http import free_port, wait_ready
from app.settings import Settings
from tests.app.conftest import serve
from tests.conftest import REPO

jsonschema_rs = pytest.importorskip("jsonschema_rs")  # schemathesis' own validator


@pytest.fixture(scope="module")
def spec(sample_index: Path) -> dict[str, Any]:
    return create_app(Settings(index=sample_index), load=False).openapi()


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_every_reference_in_the_openapi_document_resolves(spec: dict[str, Any]) -> None:
    refs = set(_refs(spec))
    assert "#/components/schemas/DocumentIn" in refs and "#/components/schemas/DocumentsIn" in refs
    for ref in refs:
        node: Any = spec
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(node, dict) and part in node, f"dangling {ref}"
            node = node[part]
    assert spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"].keys() == {"text/plain"}


def _valid(spec: dict[str, Any], model: str, body: Any) -> bool:
    schema = {"$ref": f"#/components/schemas/{model}", "components": spec["components"]}
    return jsonschema_rs.validator_for(schema).is_valid(body)


@pytest.mark.parametrize(
    ("route", "model", "body"),
    [
        ("/search", "SearchRequest", {"query": "", "messages": []}),
        ("/search", "SearchRequest", {"query": "   "}),
        ("/search", "SearchRequest", {"messages": [{"role": "assistant", "content": "您好"}]}),
        ("/search", "SearchRequest", {"query": "医师", "neighbors": False}),
        ("/search", "SearchRequest", {"query": "医师", "filters": {"bad key!": "x"}}),
        ("/search", "SearchRequest", {"query": "医师", "filters": {"law": []}}),
        ("/v1/embeddings", "OpenAIEmbeddingRequest", {"input": ""}),
        ("/v1/embeddings", "OpenAIEmbeddingRequest", {"input": []}),
        ("/v1/embeddings", "OpenAIEmbeddingRequest", {"input": ["医师", " "]}),
        ("/embed", "EmbedRequest", {"text": "医师", "texts": ["医师"]}),
        ("/embed", "EmbedRequest", {"text": ""}),
        ("/embed", "EmbedRequest", {"texts": []}),
    ],
)
def test_the_schema_refuses_what_the_server_refuses(
    spec: dict[str, Any], client: TestClient, route: str, model: str, body: dict
) -> None:
    assert not _valid(spec, model, body)
    response = client.post(route, json=body)
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "Value error" not in message and message


@pytest.mark.parametrize(
    ("route", "model", "body"),
    [
        ("/search", "SearchRequest", {"query": "医师的义务", "neighbors": 1.0}),  # JSON Schema's integer
        ("/search", "SearchRequest", {"messages": [{"role": "user", "content": "医师的义务"}], "query": ""}),
        ("/search", "SearchRequest", {"query": "医师", "filters": {"conditions": None, "logical_operator": None}}),
        ("/search", "SearchRequest", {"query": "\x06\x0e"}),  # nothing searchable: nothing found, no error
        ("/v1/embeddings", "OpenAIEmbeddingRequest", {"input": ["医师", "药品"]}),
        ("/embed", "EmbedRequest", {"texts": ["医师"]}),
    ],
)
def test_the_server_accepts_what_the_schema_accepts(
    spec: dict[str, Any], client: TestClient, route: str, model: str, body: dict
) -> None:
    assert _valid(spec, model, body)
    assert client.post(route, json=body).status_code == 200


def test_blank_and_unknown_inputs_read_plainly(client: TestClient) -> None:
    message = client.post("/v1/embeddings", json={"input": ""}).json()["error"]["message"]
    assert message == "input: must not be empty or only spaces"
    message = client.post("/search", json={"query": "医师", "filters": {"bad key!": "x"}}).json()["error"]["message"]
    assert message.startswith("filters.bad key!: invalid filter field name")
    message = client.post("/search", json={"top_k": 3}).json()["error"]["message"]
    assert message == "give a non-empty 'query', 'messages' with a user turn, or a 'session_id'"


def test_dify_gets_its_own_error_shape_for_any_bad_body(client: TestClient) -> None:
    headers = {"Content-Type": "application/json"}
    for raw in (b"\xff\xfe", b"{not json", b'{"query": 1}'):
        response = client.post("/retrieval", content=raw, headers=headers)
        assert response.status_code in (400, 422) and set(response.json()) == {"error_code", "error_msg"}
    response = client.post("/retrieval", content=b"query=x", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415 and response.json()["error_code"] == 415
    # Dify sends nulls for an empty condition: treated as absent
    body = {
        "knowledge_id": "zhrag",
        "query": "医师的义务",
        "retrieval_setting": {"top_k": 3, "score_threshold": 0.0},
        "metadata_condition": {"logical_operator": None, "conditions": None},
    }
    response = client.post("/retrieval", json=body)
    assert response.status_code == 200 and len(response.json()["records"]) == 3
    # elsewhere: zhrag's shape
    assert set(client.post("/search", content=b"\xff", headers=headers).json()) == {"error"}


def test_a_wrong_method_names_every_method_the_path_serves(client: TestClient) -> None:
    response = client.options("/documents")
    assert response.status_code == 405
    assert {m.strip() for m in response.headers["allow"].split(",")} == {"GET", "POST"}


def test_the_schema_says_what_this_server_can_do(sample_index: Path, services) -> None:
    app = create_app(Settings(index=sample_index), load=False)
    serve(app, services)
    schema = app.openapi()["components"]["schemas"]
    assert schema["SearchRequest"]["properties"]["rerank"]["const"] is False  # no reranker configured
    dimensions = schema["OpenAIEmbeddingRequest"]["properties"]["dimensions"]["anyOf"][0]
    assert dimensions["maximum"] == services.index.manifest["embedder"]["dim"]


def test_schemathesis_every_check_passes_on_a_live_server(sample_index: Path, tmp_path: Path) -> None:
    """``st run --checks all`` (schemathesis.toml at the repository root) against ``zhrag serve``: 0 failures.

    A fixed seed keeps the run reproducible; it writes to a copy of the sample index.
    """
    st = Path(sys.executable).parent / "st"
    if not st.exists():
        pytest.skip("schemathesis CLI not installed")
    index = tmp_path / "index"
    shutil.copytree(sample_index, index)
    port, key, log = free_port(), "contract-key", tmp_path / "serve.log"
    keys = tmp_path / "keys.toml"  # writes everywhere, but not admin: the fuzzer must not delete the base
    keys.write_text(f'[[keys]]\nname = "contract"\nsha256 = "{key_hash(key)}"\nroles = {{ "*" = "write" }}\n')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ZHRAG_KEYS_FILE": str(keys), "ZHRAG_RELOAD_INTERVAL": "0"}
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--index", str(index), "--port", str(port)]
            + ["--log-level", "error"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, server, log, timeout=120)
        run = subprocess.run(
            [str(st), "run", f"{base}/openapi.json", "--checks", "all", "--max-examples", "30"]
            + ["--seed", "20261207", "-H", f"Authorization: Bearer {key}", "--no-color"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert run.returncode == 0, run.stdout[-6000:]
        assert "Tested: 25" in run.stdout  # the top-level routes, their /kbs/{kb} twins, /kbs, /status
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
