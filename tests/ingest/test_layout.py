"""Layout rules on plain lines: page numbers, running headers, paragraph rebuilding, OCR type sizes."""

from __future__ import annotations

import pytest

from ingest.layout import Line, Page, assemble, is_page_number, layout, order_columns, steady_ems

W, H = 595.0, 842.0
LEFT, RIGHT, EM = 72.0, 520.0, 14.0


@pytest.mark.parametrize(
    "text", ["— 3 —", "- 3 -", "第 3 页", "第3页 共13页", "第3页，共13页", "3/13", "12", "Page 3 of 9", "一3一"]
)
def test_page_number_forms(text: str) -> None:
    assert is_page_number(text)


@pytest.mark.parametrize("text", ["第三条 本法自公布之日起施行。", "2024年", "第3条", "表3", "3.5 mg"])
def test_not_page_numbers(text: str) -> None:
    assert not is_page_number(text)


def _line(text: str, top: float, x0: float = LEFT, x1: float | None = None, em: float = EM) -> Line:
    return Line(text, x0, x1 if x1 is not None else min(RIGHT, x0 + len(text) * em), top, top + em, em)


def _body(page: int, rows: list[tuple[str, float, float | None]]) -> Page:
    lines = [_line("中华人民共和国测试法", 45, 240, 380, em=10.5)]
    lines += [_line(text, 100 + i * 24, x0, x1) for i, (text, x0, x1) in enumerate(rows)]
    lines.append(_line(f"— {page} —", 800, 280, 315, em=11))
    return Page(page, W, H, lines)


def _text(pages: list[Page]) -> str:
    return layout(pages).text


def test_headers_footers_go_and_an_article_continues_across_the_page_break() -> None:
    full = "医疗机构应当按照国家有关规定建立健全医疗质量安全管理制度和职"  # 32 characters: a full line
    page1 = _body(
        1, [("第一条 为了测试，制定本法。", LEFT + 2 * EM, None), ("第二条 " + full[:28], LEFT + 2 * EM, RIGHT)]
    )
    page1.lines.insert(3, _line(full, 100 + 2 * 24, LEFT, RIGHT))
    page2 = _body(2, [("工名册，并定期检查。", LEFT, None), ("第三条 本法自公布之日起施行。", LEFT + 2 * EM, None)])
    text = _text([page1, page2])
    assert "— 1 —" not in text and "— 2 —" not in text and "测试法" not in text.replace("为了测试，制定本法", "")
    paragraphs = text.split("\n\n")
    assert paragraphs[1] == "第二条 " + full[:28] + full + "工名册，并定期检查。"  # no break inside 职工
    assert paragraphs == ["第一条 为了测试，制定本法。", paragraphs[1], "第三条 本法自公布之日起施行。"]


def test_a_cross_reference_wrapped_to_a_line_start_does_not_start_an_article() -> None:
    rows = [
        ("第十条 违反本规定的，由县级以上人民政府卫生健康主管部门依照本法", LEFT + 2 * EM, RIGHT),
        ("第三十条的规定予以处罚。", LEFT, None),
        ("第十一条 本规定自发布之日起施行。", LEFT + 2 * EM, None),
    ]
    paragraphs = _text([_body(1, rows), _body(2, [("附则", 280, 310)])]).split("\n\n")
    assert paragraphs[0].endswith("依照本法第三十条的规定予以处罚。") and paragraphs[1].startswith("第十一条")


def test_without_indentation_a_short_line_with_a_sentence_end_closes_the_paragraph() -> None:
    rows = [
        ("县级以上人民政府应当将医疗卫生事业纳入国民经济和社会发展规划，保", LEFT, RIGHT),
        ("障公民健康。", LEFT, None),
        ("国家建立健全基本医疗卫生制度，", LEFT, None),  # short, but ends mid-sentence: the typesetter wrapped
        ("提高医疗卫生服务质量。", LEFT, None),
    ]
    paragraphs = _text([_body(1, rows), _body(2, [("完", 290, 304)])]).split("\n\n")
    assert paragraphs[:2] == [
        "县级以上人民政府应当将医疗卫生事业纳入国民经济和社会发展规划，保障公民健康。",
        "国家建立健全基本医疗卫生制度，提高医疗卫生服务质量。",
    ]


def test_larger_type_becomes_a_heading_and_a_title_over_two_lines_is_one() -> None:
    page = Page(1, W, H, [
        _line("最高人民法院关于审理医疗损害责任纠纷案件适用", 100, LEFT, RIGHT, em=22),
        _line("法律若干问题的解释", 130, 200, 400, em=22),
        _line("第一章 一般规定", 180, 240, 350, em=16),
        _line("第一条 患者以在诊疗活动中受到人身或者财产损害为由请求医疗机构承担", 220, LEFT + 28, RIGHT),
        _line("侵权责任的，适用本解释。", 244, LEFT, None),
    ])  # fmt: skip
    text = assemble([order_columns(page)]).text
    assert text.split("\n\n")[:2] == [
        "# 最高人民法院关于审理医疗损害责任纠纷案件适用法律若干问题的解释",
        "## 第一章 一般规定",
    ]


def test_ocr_sizes_are_evened_but_a_title_stays_apart() -> None:
    lines = [_line("中华人民共和国测试法", 50, em=22.3), _line("的规定", 80, em=26.0)]
    lines += [_line("第一条 为了测试制定本法", 120 + 24 * i, em=em) for i, em in enumerate([13.1, 14.0, 15.2, 16.4])]
    ems = [ln.em for ln in steady_ems(lines)]
    assert ems[0] == ems[1] > 20 and len(set(ems[2:])) == 1 and 13 < ems[2] < 17
