"""The use cases on their own, with an explicit settings object: the rules the CLI and the API share."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings
from app.usecases import DomainChangeError, IngestRequest, ingest_paths
from retrieval.index import LiveDocs, read_manifest
from tests.conftest import SAMPLE_STATUTES


def test_an_index_keeps_its_model_and_its_domain(tiny_model_dir: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    first = Settings(index=index, model=str(tiny_model_dir))
    ingest_paths(first, IngestRequest(paths=[SAMPLE_STATUTES / "医师法.md"], model_given=True, domain="medical"))
    assert read_manifest(index)["domain"] == "medical"
    # No model named: the index's own is used, whatever the settings' default names (it does not exist).
    settings = Settings(index=index, model=str(tmp_path / "no-such-model"))
    doc = tmp_path / "notice.md"
    doc.write_text("# 罕见病用药通知\n\n第一条 医疗机构应当保障罕见病患者用药。", encoding="utf-8")
    summary = ingest_paths(settings, IngestRequest(paths=[doc]))
    assert summary.documents_indexed == 1 and read_manifest(index)["domain"] == "medical"
    assert LiveDocs(index).docs.document_ids() == ["notice.md", "医师法.md"]
    before = read_manifest(index)
    with pytest.raises(DomainChangeError, match="is a medical index"):  # refused before any model loads
        ingest_paths(settings, IngestRequest(paths=[SAMPLE_STATUTES / "药品管理法.md"], domain="legal"))
    assert read_manifest(index) == before
    with pytest.raises(Exception, match="no-such-model"):  # a named model is the one loaded
        ingest_paths(settings, IngestRequest(paths=[doc], model_given=True))
