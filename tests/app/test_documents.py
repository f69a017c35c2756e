"""The document API (POST/GET/DELETE /documents), admin keys, and ``zhrag list`` / ``zhrag delete``."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from app.cli import main
from app.settings import Settings
from app.usecases.documents import UnsupportedFile, upload_name
from app.usecases.errors import InvalidRequest
from retrieval.index import IndexWriter, current_version, read_manifest
from tests.conftest import SAMPLE_STATUTES

ADMIN, USER = "admin-key", "user-key"


@pytest.fixture()
def index_copy(sample_index: Path, tmp_path: Path) -> Path:
    target = tmp_path / "index"
    shutil.copytree(sample_index, target)
    return target


@pytest.fixture()
def client(index_copy: Path) -> Iterator[TestClient]:
    settings = Settings(index=index_copy, api_keys=USER, admin_keys=ADMIN, reload_interval=0)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        yield c


def _bm25(client: TestClient, query: str) -> list[dict]:
    return client.post("/search", json={"query": query, "mode": "bm25", "top_k": 3}).json()["results"]


def test_json_documents_are_searchable_at_once_and_listed(client: TestClient, index_copy: Path) -> None:
    before = current_version(index_copy)
    doc = {
        "id": "guide-1",
        "text": "罕见病患者的用药保障：国家建立罕见病药品目录。",
        "title": "罕见病用药指南",
        "metadata": {"law": "内部指南"},
    }
    response = client.post("/documents", json=doc)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["documents_indexed"] == 1 and body["chunks"] >= 1 and body["version"] != before
    assert current_version(index_copy) == body["version"]
    hits = _bm25(client, "罕见病药品目录")
    assert hits[0]["doc_id"] == "guide-1" and hits[0]["metadata"]["law"] == "内部指南"  # served without a restart
    page = client.get("/documents", params={"limit": 100}).json()
    listed = {d["doc_id"]: d for d in page["documents"]}
    assert page["total"] == 7 and listed["guide-1"]["chunks"] == body["chunks"]
    assert listed["医师法.md"]["chunks"] > 60
    again = client.post("/documents", json={"documents": [doc]}).json()
    assert again["documents_unchanged"] == 1 and again["version"] == body["version"]  # nothing new published


def test_uploaded_files_keep_their_own_names(client: TestClient) -> None:
    text = (SAMPLE_STATUTES / "医师法.md").read_bytes()
    files = [("files", ("../../etc/医师法-副本.md", text, "text/markdown"))]
    response = client.post("/documents", files=files)
    assert response.status_code == 200, response.text
    listed = {d["doc_id"]: d for d in client.get("/documents").json()["documents"]}
    assert listed["医师法-副本.md"]["source"] == "医师法-副本.md"  # sanitised name, not the temporary path
    assert not Path("/etc/医师法-副本.md").exists()


def test_bad_uploads_publish_nothing(client: TestClient, index_copy: Path) -> None:
    before = current_version(index_copy)
    good = ("files", ("新规.md", "# 新规\n\n第一条 医疗机构应当公开收费标准。".encode(), "text/markdown"))
    unsupported = client.post(
        "/documents", files=[good, ("files", ("tool.exe", b"MZ\x90", "application/octet-stream"))]
    )
    assert unsupported.status_code == 415 and "tool.exe" in unsupported.json()["error"]["message"]
    broken = client.post("/documents", files=[good, ("files", ("scan.pdf", b"%PDF-1.4 garbage", "application/pdf"))])
    assert broken.status_code == 422
    message = broken.json()["error"]["message"]
    assert "scan.pdf" in message and "nothing was published" in message and "zhrag-upload" not in message
    bad_record = client.post("/documents", json={"id": "x", "text": ""})
    assert bad_record.status_code == 422
    assert current_version(index_copy) == before and "新规.md" not in {
        d["doc_id"] for d in client.get("/documents").json()["documents"]
    }


def test_delete_removes_a_document_and_404s_an_unknown_one(client: TestClient, index_copy: Path) -> None:
    assert any(h["doc_id"] == "药品管理法.md" for h in _bm25(client, "药品上市许可持有人"))
    response = client.delete("/documents/药品管理法.md")
    assert response.status_code == 200 and response.json()["documents_removed"] == ["药品管理法.md"]
    assert all(h["doc_id"] != "药品管理法.md" for h in _bm25(client, "药品上市许可持有人"))
    nested = client.delete("/documents/民法典/侵权责任编.md")  # ids with slashes
    assert nested.status_code == 200
    missing = client.delete("/documents/no-such-doc")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_admin_keys_guard_document_changes(client: TestClient) -> None:
    user = {"Authorization": f"Bearer {USER}"}
    assert client.get("/documents", headers=user).status_code == 200
    assert client.post("/search", json={"query": "医师"}, headers=user).status_code == 200
    refused = client.post("/documents", json={"id": "a", "text": "医师"}, headers=user)
    assert refused.status_code == 403 and "ZHRAG_ADMIN_KEYS" in refused.json()["error"]["message"]
    assert client.delete("/documents/医师法.md", headers=user).status_code == 403
    assert client.post("/documents", json={"id": "a", "text": "医师应当如实记录病历。"}).status_code == 200


def test_dify_retrieval_takes_every_accepted_key_and_only_those(client: TestClient, index_copy: Path) -> None:
    body = {"knowledge_id": "zhrag", "query": "医师的义务", "retrieval_setting": {"top_k": 2}}
    for key in (ADMIN, USER):  # the admin key is accepted everywhere, /retrieval included
        assert client.post("/retrieval", json=body, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    refused = client.post("/retrieval", json=body, headers={"Authorization": "Bearer nope"})
    assert refused.status_code == 403 and refused.json()["error_code"] == 1002
    # admin keys alone: /retrieval is not left open
    with TestClient(create_app(Settings(index=index_copy, admin_keys=ADMIN, reload_interval=0))) as only_admin:
        assert only_admin.post("/retrieval", json=body).status_code == 403
        ok = only_admin.post("/retrieval", json=body, headers={"Authorization": f"Bearer {ADMIN}"})
        assert ok.status_code == 200


def test_a_second_writer_gets_409(client: TestClient, index_copy: Path) -> None:
    writer = IndexWriter(index_copy, read_manifest(index_copy)["embedder"])  # holds the writer lock
    try:
        busy = client.post("/documents", json={"id": "a", "text": "医师应当如实记录病历。"})
        assert busy.status_code == 409 and "writer" in busy.json()["error"]["message"]
        assert client.delete("/documents/医师法.md").status_code == 409
    finally:
        writer.abort()
    assert client.post("/documents", json={"id": "a", "text": "医师应当如实记录病历。"}).status_code == 200


def test_upload_names() -> None:
    assert upload_name("../../etc/passwd.md") == "passwd.md"
    assert upload_name("C:\\Users\\张三\\病历.docx") == "病历.docx"
    assert upload_name(".hidden.txt") == "hidden.txt"
    assert upload_name("a\x00b\nc.md") == "abc.md"
    long = upload_name("医" * 300 + ".md")
    assert len(long.encode()) <= 200 and long.endswith(".md")
    with pytest.raises(InvalidRequest, match="unusable file name"):
        upload_name("../..")
    with pytest.raises(UnsupportedFile, match="病历.exe: unsupported file type"):
        upload_name("病历.exe")


def test_cli_list_and_delete(index_copy: Path, capsys) -> None:
    assert main(["list", "--index", str(index_copy), "--json"]) == 0
    listed = __import__("json").loads(capsys.readouterr().out)
    assert listed["total"] == 6 and {d["doc_id"] for d in listed["documents"]} >= {"医师法.md", "药品管理法.md"}
    assert main(["delete", "医师法.md", "nope.md", "--index", str(index_copy)]) == 3  # one was not there
    err = capsys.readouterr().err
    assert "not in the index: nope.md" in err and "deleted 1 document (" in err
    assert main(["list", "--index", str(index_copy)]) == 0
    out, err = capsys.readouterr()
    assert "医师法.md" not in out and "药品管理法.md" in out and "of 5 documents" in err
    assert main(["delete", "nope.md", "--index", str(index_copy)]) == 3
    assert "deleted nothing; the index is unchanged" in capsys.readouterr().err


def test_a_swapped_out_version_is_released_after_its_last_request(client: TestClient) -> None:
    """A live swap closes the old version's index once no request holds it (not at garbage collection)."""
    import sqlite3

    old = client.app.state.bases.any_services()
    old.acquire()  # a request still running on the old version
    response = client.post("/documents", json={"id": "d-1", "text": "罕见病患者的用药保障。"})
    assert response.status_code == 200, response.text
    assert client.app.state.bases.any_services() is not old
    assert old.index.docs.document_ids()  # still usable by the request that holds it
    old.release()
    with pytest.raises(sqlite3.ProgrammingError):
        old.index.docs.document_ids()
    fresh = client.app.state.bases.any_services()
    assert client.delete("/documents/d-1").status_code == 200  # swapped again: no lease, closed at once
    with pytest.raises(sqlite3.ProgrammingError):
        fresh.index.docs.document_ids()
    assert len(_bm25(client, "医师的义务")) == 3  # the newest version serves


def test_a_swapped_out_version_is_freed_by_reference_counting(client: TestClient) -> None:
    """The server hides what it loaded from the cyclic garbage collector (its full passes stalled searches
    for 270 ms), so a retired version must hold no reference cycle: else every write would leak an index."""
    import gc
    import weakref

    assert gc.get_freeze_count() > 100_000  # the analyzer's dictionaries, the index, the model
    version = client.app.state.bases.any_services().index.version
    old, old_index = (
        weakref.ref(client.app.state.bases.any_services()),
        weakref.ref(client.app.state.bases.any_services().index),
    )
    gc.disable()
    try:
        assert client.post("/documents", json={"id": "d-1", "text": "罕见病患者的用药保障。"}).status_code == 200
        assert client.app.state.bases.any_services().index.version != version
        deadline = time.monotonic() + 10  # the request's thread lets go of the old version just after replying
        while (old() is not None or old_index() is not None) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert old() is None and old_index() is None
    finally:
        gc.enable()


def test_documents_api_on_a_milvus_index_updates_both_legs(sample_index: Path, tmp_path: Path) -> None:
    """POST/DELETE /documents on an index whose vectors and BM25 leg live in Milvus Lite: each change is a new
    generation served at once, and the swapped-out versions release their collections."""
    pytest.importorskip("milvus_lite")
    import pymilvus

    from retrieval.index import migrate_store

    index = tmp_path / "index"
    shutil.copytree(sample_index, index)
    uri = tmp_path / "m.db"
    migrate_store(index, {"backend": "milvus", "uri": str(uri), "collection": "docs", "kind": "flat"})
    settings = Settings(index=index, api_keys=USER, admin_keys=ADMIN, reload_interval=0)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        doc = {"id": "rare-1", "text": "罕见病患者的用药保障：国家建立罕见病药品目录。", "title": "罕见病用药"}
        assert client.post("/documents", json=doc).status_code == 200
        bm25 = client.post("/search", json={"query": "罕见病药品目录", "mode": "bm25", "top_k": 3}).json()
        assert bm25["results"][0]["doc_id"] == "rare-1"  # the new chunk is in the new segment's postings
        dense = client.post("/search", json={"query": "罕见病药品目录", "mode": "dense", "top_k": 3}).json()
        assert len(dense["results"]) == 3  # the tiny model ranks nothing meaningfully; the leg answers
        served = client.app.state.bases.any_services().index
        assert served.bm25.count() == served.docs.count() == served.store.count()
        ready = client.get("/ready").json()
        assert ready["store"] == "milvus" and ready["bm25"] == "local"
        assert client.delete("/documents/rare-1").status_code == 200
        hits = client.post("/search", json={"query": "罕见病药品目录", "mode": "bm25", "top_k": 3}).json()["results"]
        assert all(h["doc_id"] != "rare-1" for h in hits)
        listed = {
            s["name"] for v in index.glob("v-*") for s in json.loads((v / "manifest.json").read_text())["segments"]
        }
        kept = {json.loads((index / "segments" / n / "milvus.json").read_text())["collection"] for n in listed}
    milvus = pymilvus.MilvusClient(str(uri))
    try:  # one collection per segment that the live or the previous version lists, nothing else
        names = set(milvus.list_collections())
    finally:
        milvus.close()
    assert names == kept and len(names) == 2  # the migrated segment, and the deleted one (previous version)


def test_an_uploaded_pdf_is_cited_by_page_in_search_and_dify(client: TestClient, tmp_path: Path) -> None:
    from tests.docgen import RenderStyle, cjk_font, render_paragraphs_pdf

    if cjk_font() is None:
        pytest.skip("no CJK TrueType font (apt-get install fonts-wqy-microhei)")
    blocks = [("title", "某某医院病历书写管理规定")]
    blocks += [
        ("body", f"第{n}条 病历书写应当客观、真实、准确、及时、完整、规范。" * 6) for n in "一二三四五六七八九十"
    ]
    blocks.append(("body", "第十一条 住院病历中的手术知情同意书由经治医师负责保存，术后二十四小时内归档。"))
    pdf = tmp_path / "rules.pdf"
    pages = render_paragraphs_pdf(blocks, pdf, RenderStyle(header="某某医院病历书写管理规定"))
    assert pages >= 2
    response = client.post("/documents", files=[("files", ("病历书写规定.pdf", pdf.read_bytes(), "application/pdf"))])
    assert response.status_code == 200, response.text
    (hit,) = [h for h in _bm25(client, "手术知情同意书归档") if h["doc_id"] == "病历书写规定.pdf"][:1]
    assert hit["metadata"]["article"] == "第十一条" and hit["metadata"]["page"] == pages
    assert hit["metadata"]["pages"] == [pages, pages] and "— " not in hit["text"]
    listed = client.get("/documents", params={"q": "病历书写"}).json()  # found by name, with its pages
    assert listed["total"] == 1 and listed["documents"][0]["pages"] == pages
    assert all(d["pages"] is None for d in client.get("/documents").json()["documents"] if d["doc_id"].endswith(".md"))
    body = {"knowledge_id": "zhrag", "query": "手术知情同意书归档", "retrieval_setting": {"top_k": 20}}
    dify = client.post("/retrieval", json=body, headers={"Authorization": f"Bearer {USER}"})
    assert dify.status_code == 200, dify.text
    record = next(r for r in dify.json()["records"] if r["metadata"]["doc_id"] == "病历书写规定.pdf")
    assert record["metadata"]["page"] == pages and record["metadata"]["pages"] == [pages, pages]


def test_start_up_removes_what_dead_writers_left_but_not_a_live_writers(index_copy: Path) -> None:
    """A server killed mid-upload left its upload and staging directories (hundreds of MB) until the next
    write; the next start removes them — unless a writer is alive and they are its own."""
    from retrieval.index import remove_dead_staging, reserve_writer

    for name in (".staging-deadbeef", "_upload-x1y2"):
        (index_copy / name).mkdir()
        (index_copy / name / "part").write_bytes(b"\0" * 1024)
    with reserve_writer(index_copy):  # a live writer (another process would hold the same lock)
        assert remove_dead_staging(index_copy) == []
    settings = Settings(index=index_copy, reload_interval=0)
    with TestClient(create_app(settings)) as c:
        assert c.get("/ready").status_code == 200
    assert not list(index_copy.glob(".staging-*")) and not list(index_copy.glob("_upload-*"))


def _follow(client: TestClient, job_id: str, timeout: float = 120) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def test_a_large_write_is_a_job_the_client_follows_to_its_version(client: TestClient, index_copy: Path) -> None:
    before = current_version(index_copy)
    text = (
        "第一条 罕见病用药保障应当遵循公平可及的原则。\n\n" + "国家鼓励罕见病药品研发和生产。" * 12_000
    )  # ~180k characters
    accepted = client.post("/documents?wait=0", json={"id": "big-guide", "text": text, "title": "罕见病用药指南"})
    assert accepted.status_code == 202 and accepted.headers["location"] == f"/jobs/{accepted.json()['id']}"
    assert accepted.json()["state"] in ("queued", "running")
    job = _follow(client, accepted.json()["id"])
    assert job["state"] == "published" and job["result"]["documents_indexed"] == 1
    assert job["result"]["version"] == current_version(index_copy) != before
    assert any(r["doc_id"] == "big-guide" for r in _bm25(client, "罕见病用药保障"))


def test_a_cancelled_job_publishes_nothing_and_releases_the_writer(client: TestClient, index_copy: Path) -> None:
    before = current_version(index_copy)
    text = "第一条 药品追溯制度。\n\n" + "药品上市许可持有人应当建立并实施药品追溯制度。" * 80_000  # ~2M characters
    accepted = client.post("/documents?wait=0", json={"id": "huge", "text": text})
    assert accepted.status_code == 202
    job_id = accepted.json()["id"]
    cancelled = client.delete(f"/jobs/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert client.get(f"/jobs/{job_id}").status_code == 404  # forgotten once cancelled
    assert current_version(index_copy) == before and not list(index_copy.glob(".staging-*"))
    assert not list(index_copy.glob("_upload-*"))
    small = client.post("/documents", json={"id": "after", "text": "医师应当如实记录病历。"})
    assert small.status_code == 200  # the writer lock was released


def test_a_failed_job_says_why_and_publishes_nothing(client: TestClient, index_copy: Path) -> None:
    before = current_version(index_copy)
    files = {"files": ("broken.pdf", b"%PDF-1.7 this is not a PDF at all", "application/pdf")}
    accepted = client.post("/documents?wait=0", files=files)
    assert accepted.status_code == 202
    job = _follow(client, accepted.json()["id"])
    assert job["state"] == "failed" and "broken.pdf" in job["error"] and job["result"] is None
    assert current_version(index_copy) == before
    # waited for, the same failure is the answer's own status
    assert client.post("/documents", files=files).status_code == 422


def test_the_per_file_time_limit_applies_to_uploads(index_copy: Path) -> None:
    settings = Settings(index=index_copy, ingest_file_timeout_s=0.001, reload_interval=0)
    with TestClient(create_app(settings)) as c:
        text = "第一条 医师应当遵守法律。\n\n" + "医师应当如实记录病历。" * 20_000
        refused = c.post("/documents", json={"id": "slow", "text": text}, params={"wait": 60})
        assert refused.status_code == 422 and "ZHRAG_INGEST_FILE_TIMEOUT_S" in refused.json()["error"]["message"]


def test_uploads_have_their_own_body_limit_on_every_documents_route(index_copy: Path) -> None:
    """A route declared as an upload (POST /documents, also under /kbs/{kb}/) takes bodies up to
    ZHRAG_MAX_UPLOAD_BYTES; every other route keeps ZHRAG_MAX_BODY_BYTES."""
    settings = Settings(
        index=index_copy, admin_keys=ADMIN, reload_interval=0, max_body_bytes=20_000, max_upload_bytes=400_000
    )
    text = ("# 长文件\n\n" + "第一条 医疗机构应当公开收费标准。\n\n" * 3000).encode()  # ~150 kB
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        for path in ("/documents", f"/kbs/{index_copy.name}/documents"):
            upload = c.post(path, files=[("files", ("长文件.md", text, "text/markdown"))], params={"wait": 30})
            assert upload.status_code == 200, (path, upload.text)
        too_big = c.post("/documents", files=[("files", ("大.md", text * 3, "text/markdown"))])
        assert too_big.status_code == 413 and "ZHRAG_MAX_UPLOAD_BYTES" in too_big.json()["error"]["message"]
        search = c.post("/search", json={"query": "医" * 19_000})
        assert search.status_code == 413 and "ZHRAG_MAX_BODY_BYTES" in search.json()["error"]["message"]


def test_the_server_merges_small_segments_between_writes_and_serves_the_merge(client: TestClient, index_copy: Path):
    """Each write adds a segment; once a tier holds eight, the job worker merges them while no write waits,
    and serves the merged version (found by searches, nothing lost)."""
    for i in range(9):
        text = f"第一条 第{i}号罕见病目录：医疗机构应当保障罕见病患者用药{i}。"
        assert client.post("/documents", json={"id": f"rare-{i}", "text": text}).status_code == 200
    deadline = time.monotonic() + 30
    while "merged_at" not in read_manifest(index_copy) and time.monotonic() < deadline:
        time.sleep(0.1)
    manifest = read_manifest(index_copy)
    assert "merged_at" in manifest and len(manifest["segments"]) == 3  # the sample, eight merged, the ninth
    assert manifest["counts"]["documents"] == 6 + 9
    deadline = time.monotonic() + 10  # served right after the merge published
    while client.get("/ready").json().get("version") != current_version(index_copy) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.get("/ready").json()["version"] == current_version(index_copy)
    found = {
        h["doc_id"]
        for h in client.post("/search", json={"query": "罕见病目录", "mode": "bm25", "top_k": 20}).json()["results"]
    }
    assert found >= {f"rare-{i}" for i in range(9)}
