from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest.document import BadRecord, Document, LoadError
from ingest.loaders import discover, load_file
from ingest.loaders.jsonl import jsonl_parts
from tests.docgen import raw_pdf

STATUTE = "# 中华人民共和国测试法\n\n<!-- INFO END -->\n\n## 第一章 总则\n\n第一条 为了测试，制定本法。\n"


def _minimal_pdf(text: str) -> bytes:
    """A one-page PDF with a text layer (Helvetica, ASCII)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    return raw_pdf(objects)


def _one(path: Path):
    docs = list(load_file(path, path.name))
    assert len(docs) == 1
    return docs[0]


def test_gb18030_text_file(tmp_path: Path) -> None:
    path = tmp_path / "gbk.txt"
    path.write_bytes("医疗纠纷预防和处理条例\n患者有权复制病历资料。".encode("gb18030"))
    doc = _one(path)
    assert doc.title == "医疗纠纷预防和处理条例" and "复制病历资料" in doc.text


def test_utf8_bom_and_utf16(tmp_path: Path) -> None:
    (tmp_path / "bom.txt").write_bytes("\ufeff第一条 测试".encode())
    (tmp_path / "u16.txt").write_bytes("第一条 测试".encode("utf-16"))
    assert _one(tmp_path / "bom.txt").text == "第一条 测试"
    assert _one(tmp_path / "u16.txt").text == "第一条 测试"


def test_markdown_title(tmp_path: Path) -> None:
    path = tmp_path / "law.md"
    path.write_text(STATUTE, encoding="utf-8")
    doc = _one(path)
    assert doc.title == "中华人民共和国测试法" and doc.format == "md"


def test_html_keeps_headings_drops_scripts(tmp_path: Path) -> None:
    path = tmp_path / "page.htm"
    html = "<html><head><title>用药指南</title><script>var x=1;</script></head><body><h2>高血压</h2><p>控制食盐。</p></body></html>"
    path.write_text(html, encoding="utf-8")
    doc = _one(path)
    assert doc.title == "用药指南" and "## 高血压" in doc.text and "var x" not in doc.text


def test_pdf_and_broken_pdf(tmp_path: Path) -> None:
    good = tmp_path / "good.pdf"
    good.write_bytes(_minimal_pdf("Medical practice law"))
    doc = _one(good)
    assert "Medical practice law" in doc.text and doc.metadata["page_count"] == 1
    assert [p.page for p in doc.pages] == [1]
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4\n this is not really a pdf")
    with pytest.raises(LoadError, match="broken.pdf"):
        list(load_file(broken, "broken.pdf"))


def test_docx_headings(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("医疗机构管理规定", level=1)
    document.add_paragraph("第一条 为了加强对医疗机构的管理，制定本规定。")
    document.save(tmp_path / "rules.docx")
    doc = _one(tmp_path / "rules.docx")
    assert doc.title == "医疗机构管理规定" and "# 医疗机构管理规定" in doc.text and "第一条" in doc.text


def test_jsonl_records_and_metadata(five_docs_jsonl: Path) -> None:
    docs = list(load_file(five_docs_jsonl, "five.jsonl"))
    assert [d.id for d in docs] == ["d1", "d2", "d3", "d4", "d5"]
    assert docs[1].metadata == {"law": "民法典"} and docs[1].title == "医疗损害"


def test_jsonl_bad_records_are_named_and_the_rest_is_read(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    lines = [
        {"id": 1, "text": "好"},
        "{not json",
        {"text": "没有id"},
        [1, 2],
        {"id": "x", "text": "医师的义务"},
        '{"id": "s", "text": "bad \\ud800 escape"}',
    ]
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n")
    items = list(load_file(path, "bad.jsonl"))
    assert [d.id for d in items if isinstance(d, Document)] == ["1", "x"]
    reasons = [b.reason for b in items if isinstance(b, BadRecord)]
    assert (
        len(reasons) == 4
        and "bad.jsonl:2: invalid JSON" in reasons[0]
        and "bad.jsonl:6: a lone surrogate" in reasons[3]
    )
    assert "bad.jsonl:3" in reasons[1] and '"id"' in reasons[1] and "bad.jsonl:4: expected a JSON object" in reasons[2]


def test_jsonl_parts_cover_every_line_once(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    records = [{"id": f"r{i}", "text": "患者在诊疗活动中受到损害" * (i % 7 + 1)} for i in range(500)]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    parts = jsonl_parts(path, target_bytes=3000)
    assert len(parts) > 10 and parts[0].start == 0 and parts[-1].end == path.stat().st_size
    docs = [d for part in parts for d in load_file(path, "big.jsonl", part)]
    assert [d.id for d in docs] == [r["id"] for r in records]
    assert [d.source for d in docs] == [f"{path}#{i}" for i in range(1, 501)]
    assert jsonl_parts(path, target_bytes=10**9) == [None]


def test_discover(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.md").write_text("x", encoding="utf-8")
    (tmp_path / "a" / "y.exe").write_text("x", encoding="utf-8")
    (tmp_path / "z.odt").write_text("x", encoding="utf-8")
    files, skipped = discover([tmp_path / "a", tmp_path / "z.odt", tmp_path / "missing"])
    assert [(p.name, d) for p, d in files] == [("x.md", "x.md")]
    assert {s[0].split("/")[-1] for s in skipped} == {"z.odt", "missing"}


def test_short_gbk_and_big5_files_decode_as_chinese_not_broken_utf8(tmp_path: Path) -> None:
    short = tmp_path / "gbk.txt"
    short.write_bytes("医疗纠纷预防和处理条".encode("gbk"))  # 20 bytes: 12 broken UTF-8 sequences
    items = list(load_file(short, short.name))
    assert [d.text for d in items if isinstance(d, Document)] == ["医疗纠纷预防和处理条"]
    assert not [i for i in items if not isinstance(i, Document)]  # no "replaced" warning
    big5 = tmp_path / "big5.txt"
    text = "醫療機構應當建立健全醫療質量管理制度，保障醫療安全。患者有權查閱、複製其病歷資料。\n" * 25
    big5.write_bytes(text.encode("big5"))
    assert 1900 < big5.stat().st_size < 2200
    assert _one(big5).text.strip() == text.strip()


def test_a_long_utf8_file_with_one_broken_byte_keeps_its_text(tmp_path: Path) -> None:
    path = tmp_path / "long.txt"
    sentence = "第一条 患者有权复制病历资料。".encode()
    body = sentence * 24_000
    cut = len(sentence) * 12_000  # between two characters
    data = body[:cut] + b"\xff" + body[cut:]
    assert len(data) > 1_000_000
    path.write_bytes(data)
    items = list(load_file(path, path.name))
    doc = next(d for d in items if isinstance(d, Document))
    assert doc.text.count("\ufffd") == 1 and doc.text.replace("\ufffd", "") == body.decode()
    assert any("1 undecodable" in getattr(i, "reason", "") for i in items)
