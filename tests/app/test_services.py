"""An index's domain and what follows it: query synonyms (by domain, recorded in the manifest, or as configured)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.services import build_analyzer, index_domain, query_synonyms
from app.settings import Settings
from retrieval.prompts import INSTRUCTIONS


def _manifest(instruction: str | None = None, synonyms: str | None = None) -> dict:
    analyzer = {"tokenizer": "jieba-search"} | ({"synonyms": synonyms} if synonyms else {})
    return {"instruction": instruction, "analyzer": analyzer}


def test_a_new_index_takes_its_domains_synonyms() -> None:
    assert query_synonyms(Settings(domain="legal")) == "legal"
    assert query_synonyms(Settings(domain="medical")) == "none"
    assert query_synonyms(Settings(domain="general")) == "none"
    assert query_synonyms(Settings(instruction="Given a contract clause, retrieve similar clauses")) == "legal"


def test_an_index_keeps_what_it_recorded_and_old_indexes_go_by_their_instruction() -> None:
    serving = Settings()  # domain legal by default: a served medical index must not inherit it
    assert query_synonyms(serving, _manifest(INSTRUCTIONS["medical"], synonyms="none")) == "none"
    assert query_synonyms(serving, _manifest(INSTRUCTIONS["medical"])) == "none"  # older manifest: no record
    assert query_synonyms(serving, _manifest(INSTRUCTIONS["legal"])) == "legal"
    assert query_synonyms(Settings(query_synonyms="legal"), _manifest(INSTRUCTIONS["medical"], "none")) == "legal"


def test_the_analyzer_expands_colloquial_words_only_with_legal_synonyms(tmp_path: Path) -> None:
    question = "我老公欠钱不还怎么办"
    legal = build_analyzer(Settings(domain="legal"))
    medical = build_analyzer(Settings(domain="medical"))
    assert "配偶" in legal.query_tokens(question) and "配偶" not in medical.query_tokens(question)
    assert legal.config()["synonyms"] == "legal" and medical.config()["synonyms"] == "none"
    own = tmp_path / "synonyms.tsv"
    own.write_text("拉肚子\t腹泻\n", encoding="utf-8")
    mine = build_analyzer(Settings(query_synonyms=str(own)))
    assert "腹泻" in mine.query_tokens("孩子拉肚子") and mine.config()["synonyms"] == str(own)
    with pytest.raises(FileNotFoundError, match="no-such-list"):
        build_analyzer(Settings(query_synonyms="no-such-list"))


def test_the_domain_of_an_index() -> None:
    serving = Settings()  # legal by default
    assert index_domain(serving, {"domain": "medical", "instruction": None}) == "medical"  # the record wins
    assert index_domain(serving, _manifest(INSTRUCTIONS["medical"])) == "medical"  # older: by instruction
    assert index_domain(serving, _manifest(None)) == "legal"  # older and no instruction: the old default
    assert index_domain(serving, _manifest("Given a contract clause, retrieve similar clauses")) is None
    assert index_domain(Settings(domain="medical")) == "medical"  # a new index: the settings
    assert query_synonyms(serving, {"domain": "medical", "analyzer": {}}) == "none"


def test_a_cpu_model_serves_with_half_the_cores_unless_told(tiny_embedder, sample_index) -> None:
    """The other half stays free for the searches' own work while bulk embedding runs (docs/performance.md)."""
    import os

    import torch

    from app.services import serving_embedder

    before = torch.get_num_threads()
    try:
        served = serving_embedder(tiny_embedder, Settings(index=sample_index, microbatch=False, query_cache_size=0))
        assert served is tiny_embedder and torch.get_num_threads() == max(1, (os.cpu_count() or 2) // 2)
        serving_embedder(
            tiny_embedder, Settings(index=sample_index, microbatch=False, query_cache_size=0, torch_threads=3)
        )
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_settings_come_from_the_env_file_zhrag_env_file_names(tmp_path: Path) -> None:
    """``.env`` in the working directory by default, the file ``ZHRAG_ENV_FILE`` names, or none (how the
    tests run: the developer's own .env never leaks into them)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    (tmp_path / ".env").write_text("ZHRAG_DEFAULT_KB=from-dotenv\n", encoding="utf-8")
    (tmp_path / "prod.env").write_text("ZHRAG_DEFAULT_KB=from-prod\n", encoding="utf-8")
    probe = "from app.settings import Settings; print(Settings().default_kb)"

    def read(env_file: str | None) -> str:
        env = {k: v for k, v in os.environ.items() if k != "ZHRAG_ENV_FILE"}
        env["PYTHONPATH"] = str(REPO)
        if env_file is not None:
            env["ZHRAG_ENV_FILE"] = env_file
        run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
        return run.stdout.strip()

    assert read(None) == "from-dotenv"
    assert read(str(tmp_path / "prod.env")) == "from-prod"
    assert read("") == "None"
    assert Settings().default_kb is None  # this test process reads no .env
