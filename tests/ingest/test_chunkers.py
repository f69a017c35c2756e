from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from ingest.chunkers import ChunkSettings, chunk_document, chunk_id, cn_to_int
from ingest.chunkers.statute import ARTICLE_RE, parse_articles
from ingest.loaders import load_file
from retrieval.text import normalize_text
from tests.conftest import LAWREF, SAMPLE_STATUTES, needs_shared

# A part ends at a sentence end, or at a clause mark when one sentence alone exceeds the budget.
PUNCTUATION_END = re.compile(r"[。；：！？，、）)”]$")


def _load(path: Path, doc_id: str | None = None):
    doc = next(load_file(path, doc_id or path.name))
    return dataclasses.replace(doc, text=normalize_text(doc.text))


def test_cn_numerals() -> None:
    assert cn_to_int("一") == 1
    assert cn_to_int("十五") == 15
    assert cn_to_int("一百二十") == 120
    assert cn_to_int("一千二百六十") == 1260
    assert cn_to_int("一千一百六十五") == 1165
    assert cn_to_int("二百零五") == 205
    assert cn_to_int("105") == 105


def test_article_regex() -> None:
    assert ARTICLE_RE.match("第十七条之一 已满七十五周岁的人").group(1) == "第十七条之一"
    assert ARTICLE_RE.match("第一千二百六十条 本法自2021年1月1日起施行。").group(1) == "第一千二百六十条"
    assert ARTICLE_RE.match("依照第一条规定") is None


def test_civil_code_book_keeps_law_title_and_headings() -> None:
    doc = _load(SAMPLE_STATUTES / "民法典" / "侵权责任编.md")
    name, chunks = chunk_document(doc, ChunkSettings(), len)
    assert name == "statute"
    first = chunks[0]
    assert first.metadata["law"] == "中华人民共和国民法典"
    assert first.metadata["article"] == "第一千一百六十四条" and first.metadata["article_no"] == 1164
    assert first.metadata["headings"] == ["侵权责任编", "第一章 一般规定"]
    assert first.embed_text.startswith("中华人民共和国民法典 侵权责任编 第一章 一般规定\n第一千一百六十四条")
    medical = [c for c in chunks if c.metadata["article"] == "第一千二百一十八条"]
    assert medical and "医疗损害责任" in medical[0].metadata["headings"][-1]


def test_every_article_once_and_in_order() -> None:
    doc = _load(SAMPLE_STATUTES / "医师法.md")
    _, chunks = chunk_document(doc, ChunkSettings(), len)
    numbers = [c.metadata["article_no"] for c in chunks if c.metadata["part"] == 1]
    assert numbers == list(range(1, 68))
    assert all(c.text.startswith(c.metadata["article"]) for c in chunks)


def test_long_article_split_keeps_number_and_sentences() -> None:
    doc = _load(SAMPLE_STATUTES / "药品管理法.md")
    _, chunks = chunk_document(doc, ChunkSettings(chunk_size=100, chunk_overlap=0), len)
    parts = [c for c in chunks if c.metadata["parts"] > 1]
    assert parts
    for c in parts:
        assert c.text.startswith(c.metadata["article"])  # the number is kept in every part
        assert len(c.text) <= 100 + len(c.metadata["article"]) + 3
        if c.metadata["part"] < c.metadata["parts"]:
            assert PUNCTUATION_END.search(c.text), c.text[-20:]


def test_chunk_ids_are_stable_and_content_derived() -> None:
    doc = _load(SAMPLE_STATUTES / "医师法.md")
    a = [c.id for c in chunk_document(doc, ChunkSettings(), len)[1]]
    b = [c.id for c in chunk_document(doc, ChunkSettings(), len)[1]]
    assert a == b and len(set(a)) == len(a)
    assert chunk_id("doc", 0, "text") != chunk_id("doc", 0, "text2") != chunk_id("doc2", 0, "text")


def test_section_and_generic_chunkers() -> None:
    from ingest.document import Document

    md = "# 高血压指南\n\n## 饮食\n\n少吃盐。多吃蔬菜。\n\n## 运动\n\n每天散步。"
    name, chunks = chunk_document(Document("g", md, title="高血压指南", format="md"), ChunkSettings(), len)
    assert name == "section" and [c.metadata["headings"][-1] for c in chunks] == ["饮食", "运动"]
    assert chunks[0].embed_text == "高血压指南 饮食\n少吃盐。多吃蔬菜。"
    text = "高血压患者要控制食盐摄入量。" * 30
    name, chunks = chunk_document(
        Document("t", text, title="饮食"), ChunkSettings(chunk_size=50, chunk_overlap=10), len
    )
    assert name == "generic" and len(chunks) > 5
    assert all(len(c.text) <= 50 and c.text.endswith("。") for c in chunks)


@needs_shared
@pytest.mark.parametrize(
    ("relative", "law", "article"),
    [
        ("刑法/刑法.md", "中华人民共和国刑法", "第十七条之一"),
        ("民法典/总则.md", "中华人民共和国民法典", "第五十六条"),
        ("宪法/宪法.md", "中华人民共和国宪法", "第一条"),
    ],
)
def test_real_statute_books(relative: str, law: str, article: str) -> None:
    doc = _load(LAWREF / relative, relative)
    name, chunks = chunk_document(doc, ChunkSettings(), len)
    assert name == "statute"
    assert {c.metadata["law"] for c in chunks} == {law}
    assert article in {c.metadata["article"] for c in chunks}
    law_, preamble, articles = parse_articles(doc.text, doc.title)
    assert len({a.label for a in articles}) == len(articles)  # no article parsed twice
    assert all(c.text.startswith(c.metadata["article"]) for c in chunks if c.metadata["article"])


@needs_shared
def test_all_lawref_articles_in_qrels_are_chunked() -> None:
    import csv

    keys = {
        r["article"]
        for r in csv.DictReader(
            open(LAWREF.parents[1] / "eval" / "stard_lawref_core" / "qrels_by_article.tsv", encoding="utf-8"),
            delimiter="\t",
        )
    }
    found = set()
    for path in sorted(LAWREF.rglob("*.md")):
        _, chunks = chunk_document(_load(path, str(path)), ChunkSettings(), len)
        found.update(f"{c.metadata['law']} {c.metadata['article']}" for c in chunks)
    assert keys <= found


def test_a_line_without_any_separator_is_cut_in_token_sized_pieces(tiny_embedder) -> None:
    """A 200,000-character line (no punctuation, no breaks) is chunked in one linear pass, not measured
    character by character; every chunk fits the budget and the text is all there."""
    from ingest.chunkers.base import break_long_runs
    from ingest.document import Document

    words = "医师患者药品法律规定国家机构管理卫生健康服务保障"
    line = "".join(words[(i * 7 + i // 13) % len(words)] for i in range(200_000))
    assert break_long_runs("第一条 医师应当遵守规范。", 8) == "第一条 医师应当遵守规范。"  # no run over 8
    assert break_long_runs("一二三四五六七", 3) == "一二三\n四五六\n七"
    spec = tiny_embedder.token_spec
    settings = ChunkSettings(chunk_size=128, chunk_overlap=0)
    name, chunks = chunk_document(Document(id="x", text=line, source="x.txt"), settings, lambda s: len(spec.encode(s)))
    assert name == "generic" and len(chunks) > 100
    assert all(len(spec.encode(c.text)) <= 128 for c in chunks)
    assert "".join(c.text.replace("\n", "") for c in chunks) == line
