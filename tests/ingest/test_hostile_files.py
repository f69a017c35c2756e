"""Hostile and broken inputs: limits per file, linear loaders, repaired encodings; the run always goes on."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

from ingest.limits import FileLimits
from ingest.loaders import load_file
from ingest.loaders.html import html_to_text
from ingest.pipeline import IngestOptions, NothingToIngest, ingest
from retrieval.index import Index
from tests.conftest import SAMPLE_STATUTES

STATUTE = SAMPLE_STATUTES / "医师法.md"


def _run(tmp_path: Path, src: Path, embedder, analyzer, **limits):
    options = IngestOptions(limits=FileLimits(**limits))
    return ingest([src], tmp_path / "index", embedder, analyzer, progress=False, options=options)


def _reasons(summary) -> dict[str, str]:
    return {Path(s["path"]).name: s["reason"] for s in summary.skipped}


def test_oversize_file_and_document_are_skipped_and_named(tmp_path: Path, tiny_embedder, analyzer) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(STATUTE, src / "ok.md")
    (src / "huge.txt").write_text("医师" * 400_000, encoding="utf-8")  # 2.4 MB, one line
    records = [{"id": "short", "text": "医师应当遵守执业规范。"}, {"id": "long", "text": "医" * 300_000}]
    (src / "corpus.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8")
    summary = _run(tmp_path, src, tiny_embedder, analyzer, max_file_mb=1, max_doc_chars=200_000)
    reasons = _reasons(summary)
    assert "MB limit per file" in reasons["huge.txt"] and "ZHRAG_INGEST_MAX_FILE_MB" in reasons["huge.txt"]
    assert "corpus.jsonl#2" in reasons["corpus.jsonl"] and "limit per document" in reasons["corpus.jsonl"]
    docs = set(Index(tmp_path / "index").docs.document_ids())
    assert docs == {"ok.md", "short"}  # the good file and the good record are indexed


def test_docx_zip_bomb_is_refused(tmp_path: Path, tiny_embedder, analyzer) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(STATUTE, src / "ok.md")
    with zipfile.ZipFile(src / "bomb.docx", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", b"\0" * (8 * 1024 * 1024))  # 8 MB of zeros, ~8 KB packed
    summary = _run(tmp_path, src, tiny_embedder, analyzer, max_file_mb=1)
    assert "zip bomb" in _reasons(summary)["bomb.docx"]
    assert Index(tmp_path / "index").docs.document_ids() == ["ok.md"]


def test_a_file_over_the_time_limit_is_skipped(tmp_path: Path, tiny_embedder, analyzer) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(STATUTE, src / "ok.md")
    text = STATUTE.read_text(encoding="utf-8")
    (src / "slow.md").write_text(text * 60, encoding="utf-8")  # ~1 MB of articles: seconds of chunking
    try:
        reasons = _reasons(_run(tmp_path, src, tiny_embedder, analyzer, max_seconds=0.05))
    except NothingToIngest as err:  # on a loaded machine even the small file can miss 0.05 s: both named
        assert f"{src / 'slow.md'}: took longer than 0.05 s" in str(err) and "ZHRAG_INGEST_FILE_TIMEOUT_S" in str(err)
        assert f"{src / 'ok.md'}: took longer than 0.05 s" in str(err)
        assert not (tmp_path / "index" / "CURRENT").exists()  # and nothing was published
        return
    assert "took longer than 0.05 s" in reasons["slow.md"] and "ZHRAG_INGEST_FILE_TIMEOUT_S" in reasons["slow.md"]
    assert "ok.md" not in reasons or "took longer" in reasons["ok.md"]  # a small file may still fit


def test_one_broken_byte_is_replaced_and_reported_not_mojibake(tmp_path: Path, tiny_embedder, analyzer) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = STATUTE.read_bytes()
    cut = data.index("第十条".encode())
    (src / "医师法.txt").write_bytes(data[:cut] + b"\xff" + data[cut:])  # one invalid UTF-8 byte
    summary = ingest([src], tmp_path / "index", tiny_embedder, analyzer, progress=False)
    assert summary.documents_indexed == 1 and not summary.skipped
    assert summary.warnings and "1 undecodable byte sequence" in summary.warnings[0]["reason"]
    chunks = Index(tmp_path / "index").docs.document_chunks("医师法.txt")
    text = "".join(c.text for c in chunks)
    assert "医师资格考试" in text and "\ufffd" in text


def test_deeply_nested_html_is_read_in_one_pass(tmp_path: Path) -> None:
    depth = 50_000
    html = "<html><head><title>深层</title></head><body>" + "<div>" * depth + "<p>患者的知情同意权。</p>"
    html += "</div>" * depth + "<h2>第二节</h2><script>alert(1)</script><p>医疗机构的义务。</p></body></html>"
    title, text = html_to_text(html)
    assert title == "深层"
    assert "患者的知情同意权。" in text and "## 第二节" in text and "医疗机构的义务。" in text
    assert "alert" not in text


def test_docx_with_many_paragraphs_keeps_styles(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("医师法释义", level=0)
    for i in range(3000):
        if i % 1000 == 0:
            document.add_heading(f"第{i // 1000 + 1}章", level=1)
        document.add_paragraph(f"第{i + 1}段 医师应当遵守执业规范。")
    path = tmp_path / "many.docx"
    document.save(str(path))
    (doc,) = list(load_file(path, "many.docx"))
    lines = doc.text.split("\n\n")
    assert doc.title == "医师法释义" and lines[0] == "# 医师法释义" and lines[1] == "# 第1章"
    assert len(lines) == 1 + 3 + 3000 and lines[-1] == "第3000段 医师应当遵守执业规范。"
