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
    assert verdicts[0].reason == "law not in index" and verdicts[0].title == "中华人民共和国公司法"
    assert verdicts[1].reason.startswith("no such article") and "第六十七条" in verdicts[1].reason
    assert verdicts[3].reason.startswith("article not in index")
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


def _labels(index: CitationIndex, text: str) -> list[tuple[str, str, str]]:
    from retrieval.metrics import verdict_label

    return [(v.citation.law_text, v.citation.article, verdict_label(v.found, v.reason)) for v in index.check(text)]


def test_an_invented_law_is_a_law_of_its_own_never_the_previous_laws_article(sample: CitationIndex) -> None:
    text = "依据《道路交通安全法》第76条的规定……另外，网络购物法第55条也有相关规定。"
    assert _labels(sample, text) == [
        ("道路交通安全法", "第七十六条", "law not in index"),
        ("网络购物法", "第五十五条", "unknown law"),
    ]
    # after a law the index holds, too; and 该法 / a bare article stay with the invented law
    text = (
        "《医师法》第二十三条规定了义务。患者权益保护法第12条规定了知情同意，违反该法第13条的应当赔偿，第14条另有规定。"
    )
    assert _labels(sample, text) == [
        ("医师法", "第二十三条", "found"),
        ("患者权益保护法", "第十二条", "unknown law"),
        ("患者权益保护法", "第十三条", "unknown law"),
        ("患者权益保护法", "第十四条", "unknown law"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("依据数据安全法第21条", ("数据安全法", "law not in index")),  # a real law, not in the sample
        ("根据网络数据安全法第21条", ("网络数据安全法", "unknown law")),  # ends like a real title, is none
        ("网络药品管理法第十二条", ("网络药品管理法", "unknown law")),  # ends like an indexed one
        ("处方应当符合药品管理法第七十二条", ("药品管理法", "found")),
        ("这一规定已被民法典第1218条吸收", ("民法典", "found")),
        ("《医疗事故处理条例》第四十九条", ("医疗事故处理条例", "law not in index")),  # a regulation
        ("依照醫師法第二十三條", ("醫師法", "found")),  # as written, in Traditional characters
        ("《药品管理法（2019修订）》第九十八条", ("药品管理法（2019修订）", "found")),
    ],
)
def test_a_law_is_named_as_written_and_judged_by_what_is_known(
    sample: CitationIndex, text: str, expected: tuple[str, str]
) -> None:
    ((law_text, _, label),) = _labels(sample, text)
    assert (law_text, label) == expected


def test_a_repealed_law_says_what_replaced_it_and_a_missing_article_says_why(sample: CitationIndex) -> None:
    (verdict,) = sample.check("依照侵权责任法第54条")
    assert (verdict.reason, verdict.title) == ("law not in index", "中华人民共和国侵权责任法")
    assert verdict.replaced_by == "中华人民共和国民法典"
    # the sample holds two books of the Civil Code: an article of another book exists but is not indexed,
    # one past the Code's last article (第一千二百六十条, from the bundled list) does not exist
    assert _labels(sample, "民法典第577条；民法典第1300条") == [
        ("民法典", "第五百七十七条", "article not in index"),
        ("民法典", "第一千三百条", "no such article"),
    ]
    assert "第一千二百六十条" in sample.check("民法典第1300条")[0].reason


def test_the_answer_sets_are_judged_right_and_nothing_is_certified_falsely(sample: CitationIndex) -> None:
    """180 LLM-style answer texts (data/eval/citation_answers) over the sample statutes."""
    import json

    from retrieval.metrics import judge_verdicts, verdict_label

    folder = SAMPLE_STATUTES.parent / "eval" / "citation_answers"
    cases = [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.open(encoding="utf-8")]
    got = {
        case["id"]: [
            (v.citation.law_text, v.citation.article, verdict_label(v.found, v.reason))
            for v in sample.check(case["text"])
        ]
        for case in cases
    }
    result = judge_verdicts(cases, got)
    assert result["citations"] >= 200 and len(cases) >= 100
    assert result["certified_falsely"] == 0 and result["extra_citations"] == 0
    assert result["accuracy"] >= 0.98, result["wrong"]
