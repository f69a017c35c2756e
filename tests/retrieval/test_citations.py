"""Statute citations: parsing every form against real statute books, verification, and lookup in search."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.chunkers.statute import parse_articles
from ingest.loaders import load_file
from retrieval.citations import CitationIndex, canonical_article
from tests.conftest import LAWREF, SAMPLE_STATUTES, needs_shared


def _articles(paths: list[Path]) -> list[tuple[str, str, int, int]]:
    rows, rid = [], 0
    for path in paths:
        (doc,) = [d for d in load_file(path, path.name) if hasattr(d, "text")]
        law, _, articles = parse_articles(doc.text, doc.title)
        for article in articles:
            rows.append((law, article.label, article.number, rid))
            rid += 1
    return rows


@pytest.fixture(scope="module")
def sample() -> CitationIndex:
    return CitationIndex(_articles(sorted(SAMPLE_STATUTES.rglob("*.md"))))


def _found(index: CitationIndex, text: str) -> list[tuple[str | None, str, bool]]:
    return [(v.citation.law, v.citation.article, v.found) for v in index.check(text)]


@pytest.mark.parametrize(
    "text",
    [
        "民法典第1165条怎么规定的",
        "《民法典》第一千一百六十五条",
        "《中华人民共和国民法典》第一千一百六十五条第一款",
        "民法典第１１６５条",  # full-width digits
        "民法典 第 1165 条",  # stray spaces
        "民法典第一千一百六十五條",  # Traditional
    ],
)
def test_every_form_of_one_citation_resolves_to_the_same_article(sample: CitationIndex, text: str) -> None:
    assert _found(sample, text) == [("中华人民共和国民法典", "第一千一百六十五条", True)]
    (citation,) = sample.parse(text)
    assert text[citation.span[0] : citation.span[1]].replace(" ", "").startswith(("民法典", "《"))


def test_paragraphs_items_references_and_lists(sample: CitationIndex) -> None:
    (c,) = sample.parse("医师法第二十三条第一款第三项")
    assert (c.law, c.article, c.paragraph, c.item) == ("中华人民共和国医师法", "第二十三条", 1, 3)
    text = "《药品管理法》第九十八条规定了假药。该法第一百一十六条规定了处罚，第一百一十七条规定了劣药。"
    assert [(v.citation.law, v.citation.article) for v in sample.check(text)] == [
        ("中华人民共和国药品管理法", "第九十八条"),
        ("中华人民共和国药品管理法", "第一百一十六条"),
        ("中华人民共和国药品管理法", "第一百一十七条"),
    ]
    assert all(v.found for v in sample.check(text))


def test_invented_laws_and_articles_are_reported(sample: CitationIndex) -> None:
    text = "依据《公司法》第二十条，以及医师法第九十九条和民法典第1165条，另见第五条。"
    verdicts = sample.check(text)
    assert [(v.citation.law_text, v.citation.article, v.found) for v in verdicts] == [
        ("公司法", "第二十条", False),
        ("医师法", "第九十九条", False),
        ("民法典", "第一千一百六十五条", True),
        ("民法典", "第五条", False),  # a bare article takes the last law named; the sample has only 2 of its books
    ]
    assert verdicts[0].reason == "unknown law"
    assert verdicts[1].reason.startswith("no such article") and "第六十七条" in verdicts[1].reason
    assert sample.check("本法第三条")[0].reason == "no law named"
    assert sample.check("医生有哪些义务？") == []


def test_canonical_article_labels() -> None:
    assert canonical_article(1165) == "第一千一百六十五条"
    assert canonical_article(120, 1) == "第一百二十条之一"
    assert canonical_article(10) == "第十条" and canonical_article(105) == "第一百零五条"


@needs_shared
def test_real_statute_books_abbreviations_and_zhi_yi() -> None:
    books = [LAWREF / "刑法" / "刑法.md", *sorted((LAWREF / "社会法").glob("劳动合同法*.md"))]
    books += sorted((LAWREF / "诉讼与非诉讼程序法").glob("民事诉讼法*.md"))
    index = CitationIndex(_articles([b for b in books if b.is_file()]))
    assert _found(index, "刑法第一百二十条之一的规定") == [("中华人民共和国刑法", "第一百二十条之一", True)]
    assert _found(index, "刑法第234條") == [("中华人民共和国刑法", "第二百三十四条", True)]
    assert _found(index, "根据《劳动合同法》第四十六条") == [("中华人民共和国劳动合同法", "第四十六条", True)]
    found = _found(index, "民诉法第一百二十二条")
    assert found and found[0][0] == "中华人民共和国民事诉讼法" and found[0][2]
    assert _found(index, "刑法第四百五十二条")[0][2] and not _found(index, "刑法第四百五十三条")[0][2]


def test_versions_prefer_the_newest_and_say_when_an_article_is_only_in_an_older_one() -> None:
    rows = [
        # law, label, number, row id, version, source
        ("中华人民共和国示例法", "第一条", 1, 0, "2012-01-01", "示例法(2012-01-01).md"),
        ("中华人民共和国示例法", "第二条", 2, 1, "2012-01-01", "示例法(2012-01-01).md"),
        ("中华人民共和国示例法", "第一条", 1, 2, "2018-06-01", "示例法(2018-06-01).md"),
        ("中华人民共和国示例法", "第一条", 1, 3, "2018-06-01", "另一目录/示例法(2018-06-01).md"),  # a second copy
    ]
    index = CitationIndex(rows)
    newest = index.check("示例法第一条")[0]
    assert newest.found and newest.rids == [2] and newest.version == "2018-06-01" and newest.newer_version is None
    older = index.check("《示例法》第二条")[0]
    assert older.found and older.rids == [1] and older.version == "2012-01-01" and older.newer_version == "2018-06-01"
    # A filter that asks for the old version gets it; one that admits neither gets nothing forced.
    asked = index.check("示例法第一条", admitted={0, 1})[0]
    assert asked.found and asked.rids == [0] and asked.newer_version == "2018-06-01"
    assert not index.check("示例法第一条", admitted={1})[0].found


def test_the_statute_chunker_records_the_version_date() -> None:
    from ingest.chunkers.statute import law_version
    from ingest.document import Document

    text = (SAMPLE_STATUTES / "医师法.md").read_text(encoding="utf-8")
    assert law_version(Document(id="x", text=text, source="医师法.md")) == "2021-08-20"
    assert law_version(Document(id="x", text="第一条 x", source="lawref/广告法(2021-04-29).md")) == "2021-04-29"
    assert law_version(Document(id="x", text="第一条 没有日期", source="x.md")) is None


def test_a_user_alias_file_adds_short_names(tmp_path: Path, sample_index: Path) -> None:
    from retrieval.index import Index

    aliases = tmp_path / "aliases.tsv"
    aliases.write_text("# short\tfull\n执医法\t中华人民共和国医师法\n药法\t药品管理法\n", encoding="utf-8")
    index = Index(sample_index)
    plain, extended = CitationIndex.from_docstore(index.docs), CitationIndex.from_docstore(index.docs, aliases)
    assert not any(v.found for v in plain.check("执医法第二十三条"))
    assert _found(extended, "执医法第二十三条；药法第九十八条") == [
        ("中华人民共和国医师法", "第二十三条", True),
        ("中华人民共和国药品管理法", "第九十八条", True),
    ]
