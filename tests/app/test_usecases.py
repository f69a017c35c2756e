"""The use cases on their own, with an explicit settings object: the rules the CLI and the API share."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.services import Services, build_services
from app.sessions import SessionStore
from app.settings import Settings
from app.usecases import DomainChangeError, InvalidRequest
from app.usecases.citations import verify_citations
from app.usecases.documents import (
    DocumentRow,
    DocumentsRejected,
    NoSuchDocument,
    WriterBusy,
    add_documents,
    delete_documents,
    list_documents,
    upload_name,
)
from app.usecases.ingest import IngestRequest, ingest_paths
from app.usecases.limits import MAX_TEXT_CHARS
from app.usecases.search import DialogueInputError, SearchQuery, UnknownConversation, search
from retrieval.index import LiveDocs, read_manifest
from retrieval.searcher import SearchOptions
from tests.conftest import SAMPLE_STATUTES

REPO = Path(__file__).resolve().parents[2]


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


def test_the_use_cases_load_without_the_adapters() -> None:
    """Every use case is callable from Python: importing them (and the services they take) loads neither the
    HTTP stack nor the CLI."""
    code = (
        "import sys\n"
        "import app.services, app.usecases.citations, app.usecases.documents, app.usecases.ingest, "
        "app.usecases.search\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette', 'uvicorn') "
        "or m.startswith(('app.api', 'app.cli'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_search_answers_a_question_and_a_conversation(services: Services) -> None:
    question = "医师在执业活动中应当履行哪些义务"
    answer = search(services, SearchQuery(question, options=SearchOptions(top_k=3, mode="bm25")))
    assert answer.question == question
    assert answer.outcome.hits[0].chunk.metadata["law"].endswith("医师法")
    turns = [
        {"role": "user", "content": "医师法对医师有哪些规定？"},
        {"role": "assistant", "content": "医师法规定了医师的考试、注册和执业规则。"},
    ]
    follow_up = "那他们在执业活动中要履行什么义务？"
    answer = search(services, SearchQuery(follow_up, turns, options=SearchOptions(top_k=3, mode="bm25")))
    assert answer.question == follow_up
    assert answer.outcome.lexical is not None and len(answer.outcome.lexical) > 1  # the turns were read together
    assert any(h.chunk.metadata.get("article") == "第二十三条" for h in answer.outcome.hits)


def test_search_refuses_what_it_cannot_answer(services: Services) -> None:
    with pytest.raises(InvalidRequest, match="top_k must be between 1 and 100"):
        search(services, SearchQuery("义务", options=SearchOptions(top_k=0)))
    with pytest.raises(DialogueInputError, match="no|user turn"):
        search(services, SearchQuery(None, [{"role": "assistant", "content": "您好"}]))
    with pytest.raises(InvalidRequest, match="message 0"):
        search(services, SearchQuery("义务", [{"role": "robot", "content": "?"}]))
    with pytest.raises(UnknownConversation):
        search(services, SearchQuery(session_id="never-started"), SessionStore())
    with pytest.raises(InvalidRequest, match="invalid filter field 'law name'"):
        search(services, SearchQuery("义务", options=SearchOptions(mode="bm25", filters={"law name": "医师法"})))


def test_verify_citations_gives_each_citation_its_verdict(services: Services) -> None:
    text = "依据《中华人民共和国医师法》第二十三条，医师应当如实记录病历；《中华人民共和国医师法》第九百条另有规定。"
    real, invented = verify_citations(services, text)
    assert real["found"] and "履行下列义务" in real["text"] and real["index_version"] == services.index.version
    assert not invented["found"] and invented["text"] is None
    with pytest.raises(InvalidRequest, match="longer than"):
        verify_citations(services, "医" * (MAX_TEXT_CHARS + 1))


def test_documents_are_added_listed_and_deleted(sample_index: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    shutil.copytree(sample_index, index)
    services = build_services(Settings(index=index))
    folder = tmp_path / "upload"
    folder.mkdir()
    saved = folder / upload_name("../罕见病用药通知.md")
    saved.write_text("# 罕见病用药通知\n\n第一条 医疗机构应当保障罕见病患者用药。", encoding="utf-8")
    change = add_documents(services, folder, {str(saved): "罕见病用药通知.md"})
    assert change.documents_indexed == 1 and change.chunks >= 1
    assert change.total_documents == services.index.docs.count_documents() + 1
    served = build_services(Settings(index=index))  # the published version
    page = list_documents(served, 0, 1000)
    assert DocumentRow("罕见病用药通知.md", "罕见病用药通知.md", change.chunks) in page.rows
    assert page.total == change.total_documents
    found = list_documents(served, 0, 10, contains="罕见病")  # a name search, counted alone
    assert [r.doc_id for r in found.rows] == ["罕见病用药通知.md"] and found.total == 1
    removed = delete_documents(index, ["罕见病用药通知.md"], {})
    assert removed.documents_removed == ["罕见病用药通知.md"] and removed.total_documents == page.total - 1
    with pytest.raises(NoSuchDocument, match="罕见病用药通知.md"):
        delete_documents(index, ["罕见病用药通知.md"], {})
    holder = subprocess.Popen(  # another process writing
        [
            sys.executable,
            "-c",
            f"from pathlib import Path; from retrieval.versions import WriterLock; WriterLock(Path({str(index)!r})); print(1); input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "1"
        with pytest.raises(WriterBusy):
            delete_documents(index, ["医师法.md"], {})
    finally:
        holder.communicate("\n")
    with pytest.raises(DocumentsRejected, match="bad.jsonl"):
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "bad.jsonl").write_text('{"text": "没有编号"}\nnot json\n', encoding="utf-8")
        add_documents(served, bad, {str(bad / "bad.jsonl"): "bad.jsonl"})
    assert LiveDocs(index).docs.count_documents() == page.total - 1  # the refused add published nothing
