"""The settings tree: every ``ZHRAG_*`` variable lands in its section, flat names work everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import FLAT_NAMES, SECTIONS, TOP_LEVEL, Settings

REPO = Path(__file__).resolve().parents[2]


def test_variables_land_in_their_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "ZHRAG_MILVUS_URI": "http://milvus:19530",
        "ZHRAG_PORT": "9001",
        "ZHRAG_API_KEYS": "k1, k2",
        "ZHRAG_DEVICES": '["cuda:0", "cuda:1"]',
        "ZHRAG_EMBED_CACHE": "/var/cache/zhrag.sqlite",
        "ZHRAG_EMBEDDER": "openai",
        "ZHRAG_INGEST_MAX_FILE_MB": "8",
        "ZHRAG_KEYS_FILE": "",  # docker compose's unset variable: none, not the directory "."
        "ZHRAG_ROOT": "",
        "zhrag_weight_bm25": "0.5",  # case does not matter
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.milvus.uri == "http://milvus:19530" and settings.serve.port == 9001
    assert settings.auth.keys == ["k1", "k2"] and settings.ingest.devices == ["cuda:0", "cuda:1"]
    assert settings.embedding.cache == Path("/var/cache/zhrag.sqlite") and settings.embedding.backend == "openai"
    assert settings.ingest.max_file_mb == 8.0 and settings.search.weight_bm25 == 0.5
    assert settings.auth.keys_file is None and settings.root is None
    # A keyword beats the environment; a section may be given whole.
    assert Settings(port=9002).serve.port == 9002
    assert Settings(milvus={"uri": "lite.db"}).milvus.uri == "lite.db"


def test_flat_names_are_one_per_field_and_typos_are_refused(tmp_path: Path) -> None:
    fields = [(section, name) for section, model in SECTIONS.items() for name in model.model_fields]
    assert len(FLAT_NAMES) == len(fields) and not set(FLAT_NAMES) & set(TOP_LEVEL)  # no two share a variable
    settings = Settings(index=tmp_path / "i", model="m", embed_timeout=5, reranker="r")
    assert (settings.embedding.model, settings.embedding.timeout, settings.search.reranker) == ("m", 5, "r")
    changed = settings.updated(milvus_token="secret", index=tmp_path / "j")
    assert changed.milvus.connection == {"token": "secret"} and changed.index == tmp_path / "j"
    assert settings.milvus.connection == {} and settings.index == tmp_path / "i"  # the original is unchanged
    with pytest.raises(ValidationError, match="modle"):
        Settings(modle="m")
    with pytest.raises(TypeError, match="modle"):
        settings.updated(modle="m")
    with pytest.raises(ValidationError, match="port"):
        Settings(port="not a port")


def test_the_readme_documents_every_variable() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [f"ZHRAG_{n.upper()}" for n in (*TOP_LEVEL, *FLAT_NAMES) if f"ZHRAG_{n.upper()}" not in readme]
    assert not missing
