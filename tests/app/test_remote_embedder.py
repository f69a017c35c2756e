"""An index built through a remote OpenAI-compatible embedding server (a local fake one)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.cli import EXIT_OK, EXIT_USAGE, main
from tests.conftest import SAMPLE_STATUTES
from tests.fake_http import JSONHandler, serve

DIM = 12


class FakeEmbeddings(JSONHandler):
    """Deterministic pseudo-embeddings keyed by (model, text); records what it was sent."""

    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = self.read_json()
        FakeEmbeddings.requests.append(body)
        data = []
        for i, text in enumerate(body["input"]):
            seed = int(hashlib.md5(f"{body['model']}|{text}".encode()).hexdigest()[:8], 16)
            data.append({"index": i, "embedding": np.random.default_rng(seed).normal(size=DIM).tolist()})
        self.send_json({"data": data})


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve(FakeEmbeddings) as url:
        yield url


def test_manifest_records_the_remote_embedder(server: str, tmp_path: Path, capsys) -> None:
    index = tmp_path / "remote"
    code = main(
        [
            "ingest",
            str(SAMPLE_STATUTES / "医师法.md"),
            "--index",
            str(index),
            "--embedder",
            "openai",
            "--embed-base-url",
            server,
            "--model",
            "qwen3-emb",
            "--embed-query-model",
            "qwen3-emb-query",
            "--embed-api-key",
            "secret-key",
            "--quiet",
        ]
    )
    assert code == EXIT_OK
    manifest = json.loads((index / (index / "CURRENT").read_text().strip() / "manifest.json").read_text())
    assert manifest["embedder"]["backend"] == "openai" and manifest["dim"] == DIM
    assert manifest["embedder"]["query_model"] == "qwen3-emb-query"
    assert "secret-key" not in json.dumps(manifest)  # the key is never stored
    capsys.readouterr()

    FakeEmbeddings.requests.clear()
    assert main(["search", "医师的义务", "--index", str(index), "--mode", "dense", "--json"]) == EXIT_OK
    body = json.loads(capsys.readouterr().out)
    assert len(body["results"]) == 5
    sent = FakeEmbeddings.requests[-1]
    assert sent["model"] == "qwen3-emb-query"
    assert sent["input"][0].startswith("Instruct: ") and sent["input"][0].endswith("\nQuery:医师的义务")


def test_server_down_is_a_clear_error(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "ingest",
            str(SAMPLE_STATUTES / "医师法.md"),
            "--index",
            str(tmp_path / "i"),
            "--embedder",
            "openai",
            "--embed-base-url",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
            "--quiet",
        ]
    )
    assert code == EXIT_USAGE and "unreachable" in capsys.readouterr().err
    assert not (tmp_path / "i" / "CURRENT").exists()
