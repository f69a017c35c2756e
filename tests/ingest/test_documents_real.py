"""Real documents in: generated official-style PDFs, scans and photographed pages through OCR, Word tables,
spreadsheets, page provenance, and hostile files (encrypted, corrupt, blank, huge, zip bombs)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

from ingest.chunkers import ChunkSettings, chunk_document
from ingest.chunkers.statute import parse_articles
from ingest.document import Document, LoadError, LoadWarning
from ingest.limits import FileLimits
from ingest.loaders import load_file
from ingest.pipeline import IngestOptions, ingest
from retrieval.index import Index
from retrieval.text import normalize_text
from tests.conftest import SAMPLE_STATUTES
from tests.docgen import (
    RenderStyle,
    cjk_font,
    raw_pdf,
    render_paragraphs_pdf,
    render_text_image,
    scan_pdf,
    statute_blocks,
)

needs_font = pytest.mark.skipif(cjk_font() is None, reason="no CJK TrueType font (apt-get install fonts-wqy-microhei)")
LAW = "中华人民共和国医师法"
CJK_BREAK = re.compile(r"[\u3400-\u9fff]\n+[\u3400-\u9fff]")
SETTINGS = ChunkSettings()


def _compact(text: str) -> str:
    return "".join(text.split())


def _doc(path: Path) -> Document:
    docs = [d for d in load_file(path, path.name) if isinstance(d, Document)]
    assert len(docs) == 1
    return docs[0]


def _chunks(doc: Document, size: int = 512):
    doc = Document(**{**doc.__dict__, "text": normalize_text(doc.text)})
    return chunk_document(doc, ChunkSettings(chunk_size=size, chunk_overlap=0), len)[1]


def _reference_articles(markdown: str) -> dict[str, str]:
    law, _, articles = parse_articles(markdown, "")
    assert law == LAW
    return {a.label: _compact("".join(a.paragraphs)) for a in articles}


@pytest.fixture(scope="module")
def statute_md() -> str:
    """The first chapter and a half of 医师法 (bundled sample): 14 articles, some of several paragraphs."""
    text = (SAMPLE_STATUTES / "医师法.md").read_text(encoding="utf-8")
    return text[: text.index("第十五条")]


@pytest.fixture(scope="module")
def statute_pdf(statute_md: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two or more A4 pages: running header, '— N —' footers, justified paragraphs that cross the page break."""
    if cjk_font() is None:
        pytest.skip("no CJK TrueType font (apt-get install fonts-wqy-microhei)")
    path = tmp_path_factory.mktemp("pdf") / "医师法.pdf"
    pages = render_paragraphs_pdf(statute_blocks(statute_md), path, RenderStyle(header=LAW, font_size=16), title=LAW)
    assert pages >= 2
    return path


def test_text_pdf_is_clean_and_every_article_is_found(statute_pdf: Path, statute_md: str) -> None:
    doc = _doc(statute_pdf)
    assert doc.title == LAW and doc.text.startswith(f"# {LAW}")
    assert not re.search(r"—\s*\d+\s*—", doc.text)  # page numbers gone
    assert doc.text.count(LAW) == 1  # the running header gone, the title heading kept
    assert not any("\n" in para for para in doc.text.split("\n\n"))  # wrapped lines joined into paragraphs
    reference = _reference_articles(statute_md)
    chunks = _chunks(doc)
    found = {c.metadata["article"]: _compact(c.text) for c in chunks if c.metadata.get("article")}
    assert found == reference  # same articles, same text (whitespace aside)
    assert all(c.metadata["law"] == LAW for c in chunks)
    assert not any(CJK_BREAK.search(c.text) for c in chunks)


def test_an_article_across_the_page_break_is_one_chunk_with_both_pages(statute_pdf: Path, statute_md: str) -> None:
    chunks = _chunks(_doc(statute_pdf))
    reference = _reference_articles(statute_md)
    by_pages = {c.metadata["article"]: c.metadata["pages"] for c in chunks if c.metadata.get("article")}
    crossing = [a for a, pages in by_pages.items() if pages[0] < pages[1]]
    assert crossing, by_pages
    for article in crossing:
        (chunk,) = [c for c in chunks if c.metadata.get("article") == article]
        assert _compact(chunk.text) == reference[article]
    assert by_pages["第一条"] == [1, 1] and all(c.metadata["page"] == c.metadata["pages"][0] for c in chunks)
    assert max(p[1] for p in by_pages.values()) == len(_doc(statute_pdf).pages)


def test_two_column_page_reads_column_by_column(tmp_path: Path) -> None:
    if cjk_font() is None:
        pytest.skip("no CJK TrueType font")
    left = "左栏第一段：医疗机构应当建立健全内部质量管理和控制制度，对医疗质量承担责任。" * 3
    right = "右栏第二段：药品经营企业应当按照国家药品监督管理部门的规定储存药品。" * 3
    path = tmp_path / "two.pdf"
    render_paragraphs_pdf([("body", left), ("body", right)] * 4, path, RenderStyle(columns=2, footer=None))
    text = _compact(_doc(path).text)
    assert text.count(_compact(left)) == 4 and text.count(_compact(right)) == 4  # no line of one column in the other


def test_scanned_image_is_ocrd_with_confidence_in_its_chunks(tmp_path: Path) -> None:
    pytest.importorskip("rapidocr_onnxruntime")
    if cjk_font() is None:
        pytest.skip("no CJK TrueType font")
    lines = [
        "第十二条 医疗机构应当按照规定",
        "建立医疗质量安全管理制度，保障",
        "患者的诊疗安全。",
    ]
    path = tmp_path / "scan.png"
    render_text_image(lines, path)
    doc = _doc(path)
    assert doc.format == "image" and doc.pages and doc.pages[0].ocr
    assert _compact(doc.text) == _compact("".join(lines)) and "\n" not in doc.text.strip()  # one paragraph
    (chunk,) = _chunks(doc)
    assert chunk.metadata["ocr"] is True and 0.8 < chunk.metadata["ocr_confidence"] <= 1.0
    assert chunk.metadata["pages"] == [1, 1]


def test_mixed_pdf_ocrs_only_its_image_pages(statute_pdf: Path, statute_md: str, tmp_path: Path) -> None:
    pytest.importorskip("rapidocr_onnxruntime")
    mixed = tmp_path / "mixed.pdf"
    scan_pdf(statute_pdf, mixed, dpi=150, pages=[1])
    doc = _doc(mixed)
    assert [p.ocr for p in doc.pages][:2] == [False, True]
    text = _doc(statute_pdf).text
    ratio = __import__("difflib").SequenceMatcher(None, _compact(text), _compact(doc.text), autojunk=False).ratio()
    assert ratio > 0.97
    chunks = _chunks(doc)
    assert any(c.metadata.get("ocr") for c in chunks) and not all(c.metadata.get("ocr") for c in chunks)


def test_scanned_pdf_without_ocr_is_named_with_the_fix(statute_pdf: Path, tmp_path: Path, monkeypatch) -> None:
    import ingest.loaders.pdf as pdf_loader

    scanned = tmp_path / "scanned.pdf"
    scan_pdf(statute_pdf, scanned, dpi=100)
    monkeypatch.setattr(pdf_loader, "ocr_available", lambda: False)
    with pytest.raises(LoadError, match=r"scanned\.pdf.*scanned PDF.*\.\[ocr\]"):
        list(load_file(scanned, "scanned.pdf"))
    mixed = tmp_path / "mixed.pdf"
    scan_pdf(statute_pdf, mixed, dpi=100, pages=[1])
    items = list(load_file(mixed, "mixed.pdf"))
    warning = next(i for i in items if isinstance(i, LoadWarning))
    assert "pages 2" in warning.reason and ".[ocr]" in warning.reason
    assert any(isinstance(i, Document) and "第一条" in i.text for i in items)


def _docx_with_table(path: Path, rows: int) -> None:
    import docx

    document = docx.Document()
    document.add_heading("医院药品管理规定", level=1)
    document.add_paragraph("第一条 为规范药品使用，制定本规定。")
    document.add_paragraph("表1 高警示药品目录：")
    table = document.add_table(rows=rows + 1, cols=3)
    for j, head in enumerate(["药品名称", "规格", "储存要求"]):
        table.cell(0, j).text = head
    for i in range(1, rows + 1):
        for j, value in enumerate([f"药品{i}号注射液", f"{i}ml:{i}mg", "遮光，密闭，冷处保存"]):
            table.cell(i, j).text = value
    document.add_paragraph("第二条 本规定自发布之日起施行。")
    document.save(path)


def test_docx_table_is_a_markdown_table_in_place_and_split_by_rows(tmp_path: Path) -> None:
    path = tmp_path / "rules.docx"
    _docx_with_table(path, 40)
    doc = _doc(path)
    head = "| 药品名称 | 规格 | 储存要求 |"
    assert head in doc.text and "| --- | --- | --- |" in doc.text
    assert doc.text.index("第一条") < doc.text.index(head) < doc.text.index("第二条")  # in document order
    chunks = _chunks(doc, size=200)
    tables = [c for c in chunks if head in c.text]
    assert len(tables) > 2  # 40 rows do not fit one 200-character chunk
    for c in tables:
        assert c.text.startswith("表1 高警示药品目录：\n" + head)  # caption and header repeated
        rows = [ln for ln in c.text.split("\n") if ln.startswith("| 药品")][1:]
        assert rows and all(ln.endswith("冷处保存 |") for ln in rows)  # never cut through a row
    numbers = [int(m) for c in tables for m in re.findall(r"\| 药品(\d+)号", c.text)]
    assert numbers == list(range(1, 41))
    small = tmp_path / "small.docx"
    _docx_with_table(small, 3)
    (whole,) = [c for c in _chunks(_doc(small), size=400) if head in c.text]
    assert whole.text.count("| 药品") == 4  # a table that fits stays whole in one chunk


def test_xlsx_sheets_become_documents_with_the_header_in_every_chunk(tmp_path: Path) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "门诊收费"
    sheet.append(["项目编码", "项目名称", "价格(元)"])
    for i in range(60):
        sheet.append([f"A{i:03d}", f"普通门诊诊查费{i}", 10 + i])
    other = book.create_sheet("说明")
    other.append(["说明"])
    other.append(["本表自2024年1月1日起执行。"])
    book.create_sheet("空表")
    path = tmp_path / "收费标准.xlsx"
    book.save(path)
    docs = [d for d in load_file(path, path.name) if isinstance(d, Document)]
    assert [d.id for d in docs] == ["收费标准.xlsx#门诊收费", "收费标准.xlsx#说明"]
    assert docs[0].metadata == {"sheet": "门诊收费"} and docs[0].title == "收费标准 / 门诊收费"
    chunks = _chunks(docs[0], size=300)
    assert len(chunks) > 2
    assert all(c.text.startswith("| 项目编码 | 项目名称 | 价格(元) |\n| --- |") for c in chunks)
    assert all(c.metadata["sheet"] == "门诊收费" for c in chunks)
    codes = [m for c in chunks for m in re.findall(r"\| (A\d{3}) \|", c.text)]
    assert codes == [f"A{i:03d}" for i in range(60)] and "| A005 | 普通门诊诊查费5 | 15 |" in docs[0].text


def test_csv_in_gbk_is_a_table(tmp_path: Path) -> None:
    path = tmp_path / "药品.csv"
    path.write_bytes("药品名称,剂型\n阿莫西林,胶囊\n布洛芬,片剂\n".encode("gb18030"))
    doc = _doc(path)
    assert doc.text.splitlines()[0] == "| 药品名称 | 剂型 |" and "| 布洛芬 | 片剂 |" in doc.text


def _many_page_pdf(pages: int) -> bytes:
    """A PDF of ``pages`` pages sharing one content stream (small file, many pages)."""
    # Mid-page (not a running header) and 600 characters a page: 6 million characters in all, over the
    # document-length limit if the file-time limit has not stopped it first; either way a limit, by its name.
    stream = b"BT /F1 10 Tf 20 400 Td (" + b"Article 1 applies here. " * 25 + b") Tj ET"
    kids = " ".join(f"{4 + i} 0 R" for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R /Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> >>"
    objects += [page] * pages
    return raw_pdf(objects)


def test_hostile_files_are_named_and_skipped_and_the_rest_is_kept(
    statute_pdf: Path, tmp_path: Path, tiny_embedder, analyzer
) -> None:
    from PIL import Image
    from pypdf import PdfReader, PdfWriter

    corpus = tmp_path / "in"
    corpus.mkdir()
    (corpus / "good.pdf").write_bytes(statute_pdf.read_bytes())
    writer = PdfWriter(clone_from=PdfReader(statute_pdf))
    writer.encrypt(user_password="secret", owner_password="owner")
    writer.write(corpus / "locked.pdf")
    (corpus / "truncated.pdf").write_bytes(statute_pdf.read_bytes()[:3000])
    Image.new("L", (800, 600), 255).save(corpus / "blank.png")
    (corpus / "huge.pdf").write_bytes(_many_page_pdf(10_000))
    with zipfile.ZipFile(corpus / "bomb.xlsx", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/worksheets/sheet1.xml", b"0" * (40 << 20))
    limits = FileLimits(max_seconds=3.0, max_file_mb=16)
    summary = ingest(
        [corpus], tmp_path / "index", tiny_embedder, analyzer, progress=False, options=IngestOptions(limits=limits)
    )
    reasons = {Path(s["path"]).name: s["reason"] for s in summary.skipped}
    assert set(reasons) == {"locked.pdf", "truncated.pdf", "blank.png", "huge.pdf", "bomb.xlsx"}, reasons
    assert "password" in reasons["locked.pdf"]
    assert "damaged" in reasons["truncated.pdf"] or "not a readable PDF" in reasons["truncated.pdf"]
    assert "no text" in reasons["blank.png"] or ".[ocr]" in reasons["blank.png"]
    assert "ZHRAG_INGEST" in reasons["huge.pdf"]  # the time or size limit, by its setting's name
    assert "zip bomb" in reasons["bomb.xlsx"]
    assert summary.documents_indexed == 1
    index = Index(tmp_path / "index")
    chunks = list(index.docs.get(range(index.docs.next_rid())).values())
    index.close()
    assert {c.doc_id for c in chunks} == {"good.pdf"} and all("page" in c.metadata for c in chunks)


def test_ruled_pdf_table_becomes_a_markdown_table_in_place(tmp_path: Path) -> None:
    if cjk_font() is None:
        pytest.skip("no CJK TrueType font")
    rows = [["药品名称", "规格", "储存要求"]] + [[f"药品{i}号", f"{i}ml", "冷处保存"] for i in range(1, 6)]
    blocks = [
        ("title", "医院药品储存规定"),
        ("body", "第一条 高警示药品按下表储存："),
        ("body", "第二条 本规定自发布之日起施行。"),
    ]
    path = tmp_path / "table.pdf"
    render_paragraphs_pdf(blocks, path, RenderStyle(header="医院药品储存规定"), tables={1: rows})
    text = _doc(path).text
    head = "| 药品名称 | 规格 | 储存要求 |"
    assert head in text and "| 药品3号 | 3ml | 冷处保存 |" in text
    assert text.index("高警示药品") < text.index(head) < text.index("第二条")  # where it stood on the page
    assert "药品3号 3ml" not in text  # the cells are not also left as loose lines


def test_ingest_summary_counts_ocr_pages_and_confidence(tmp_path: Path, tiny_embedder, analyzer) -> None:
    pytest.importorskip("rapidocr_onnxruntime")
    if cjk_font() is None:
        pytest.skip("no CJK TrueType font")
    corpus = tmp_path / "scans"
    corpus.mkdir()
    render_text_image(["第一条 医疗机构应当公开收费标准。", "第二条 本规定自发布之日起施行。"], corpus / "a.jpg")
    summary = ingest([corpus], tmp_path / "index", tiny_embedder, analyzer, progress=False)
    assert summary.ocr_pages == 1 and 0.8 < summary.ocr_confidence <= 1.0 and not summary.skipped
