"""The one filter language: SQL compiled from Dify conditions agrees with Dify's semantics, row by row."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from retrieval.index import Index
from retrieval.metadata_filter import Condition, FilterError, MetadataFilter, as_filter, to_sql


def _reference(actual: Any, op: str, expected: Any) -> bool:
    """Dify's metadata comparison, written as plainly as possible (the oracle for the SQL)."""
    if op == "empty":
        return actual in (None, "", [], {})
    if op == "not empty":
        return actual not in (None, "", [], {})
    if actual is None:
        return op in ("is not", "not in", "not contains", "≠")
    text = " ".join(map(str, actual)) if isinstance(actual, list) else str(actual)
    values = [str(v) for v in (expected if isinstance(expected, list) else [expected])]
    if op in ("=", "≠", ">", "<", "≥", "≤"):
        try:
            a, b = float(actual), float(expected)
        except (TypeError, ValueError):
            return False
        return {"=": a == b, "≠": a != b, ">": a > b, "<": a < b, "≥": a >= b, "≤": a <= b}[op]
    return {
        "contains": str(expected) in text,
        "not contains": str(expected) not in text,
        "start with": text.startswith(str(expected)),
        "end with": text.endswith(str(expected)),
        "is": text == str(expected),
        "is not": text != str(expected),
        "in": text in values,
        "not in": text not in values,
        "before": text < str(expected),
        "after": text > str(expected),
    }[op]


def _row_fields(row: tuple[Any, ...]) -> Mapping[str, Any]:
    doc_id, cid, title, source, metadata = row
    return {**json.loads(metadata), "doc_id": doc_id, "chunk_id": cid, "title": title, "source": source}


CASES: list[tuple[str | list[str], str, Any, str]] = [  # (field, operator, value, selects: some/all/none)
    ("law", "is", "中华人民共和国医师法", "some"),
    ("law", "is not", "中华人民共和国医师法", "some"),
    ("law", "contains", "药品", "some"),
    ("law", "not contains", "药品", "some"),
    ("law", "start with", "中华人民共和国民法典", "some"),
    ("law", "end with", "防治法", "some"),
    ("law", "in", ["中华人民共和国医师法", "中华人民共和国药品管理法"], "some"),
    ("law", "not in", ["中华人民共和国医师法"], "some"),
    ("article_no", "≤", 10, "some"),
    ("article_no", "<", "3", "some"),
    ("article_no", ">", 1200, "some"),
    ("article_no", "≥", 1165.0, "some"),
    ("article_no", "=", "1165", "some"),
    ("article_no", "≠", 1, "some"),
    ("article_no", "≤", "not a number", "none"),
    ("article_no", "≠", "not a number", "none"),
    ("article", "before", "第三条", "some"),
    ("article", "after", "第五条", "some"),
    ("headings", "contains", "总则", "some"),  # a list field: its items joined by spaces
    ("headings", "is", "第一章 总则", "some"),
    ("headings", "empty", None, "none"),
    ("headings", "not empty", None, "all"),
    ("part", "≥", 1, "all"),
    ("part", "=", 2, "none"),
    ("missing_field", "is not", "x", "all"),
    ("missing_field", "is", "x", "none"),
    ("missing_field", "empty", None, "all"),
    ("missing_field", "≠", 3, "all"),
    ("missing_field", "<", 3, "none"),
    ("doc_id", "contains", "医师法", "some"),
    ("title", "end with", "医师法", "some"),
    ("title", "start with", "中华人民共和国", "all"),
    ("chunk_id", "contains", "a", "some"),
    (["article", "law"], "contains", "第一百", "some"),  # any of several fields
]


@pytest.fixture(scope="module")
def index(sample_index: Path) -> Index:
    return Index(sample_index)


@pytest.fixture(scope="module")
def docs(index: Index):
    return index.docs


@pytest.fixture(scope="module")
def rows(index: Index) -> list[tuple[int, Mapping[str, Any]]]:
    found = []
    for segment in index.segments:  # the rows read straight from each segment's SQLite file
        db = sqlite3.connect(str(segment.docs.path))
        found += db.execute("SELECT rid, doc_id, id, title, source, metadata FROM chunks ORDER BY rid").fetchall()
        db.close()
    assert found, "the sample index has rows"
    return [(r[0], _row_fields(r[1:])) for r in sorted(found)]


def _expected(rows: list[tuple[int, Mapping[str, Any]]], spec: MetadataFilter) -> list[int]:
    def holds(fields: Mapping[str, Any], cond: Condition) -> bool:
        names = cond.name if isinstance(cond.name, list) else [cond.name]
        return any(_reference(fields.get(n), cond.comparison_operator, cond.value) for n in names)

    combine = any if spec.any_of else all
    return [rid for rid, fields in rows if combine(holds(fields, c) for c in spec.conditions)]


@pytest.mark.parametrize(("name", "op", "value", "selects"), CASES)
def test_each_operator_matches_difys_semantics_on_real_statutes(rows, docs, name, op, value, selects) -> None:
    spec = MetadataFilter([Condition(name=name, comparison_operator=op, value=value)])
    expected = _expected(rows, spec)
    assert docs.filter_rids(spec).tolist() == expected
    assert {"none": len(expected) == 0, "all": len(expected) == len(rows), "some": 0 < len(expected) < len(rows)}[
        selects
    ]


def test_and_or_combinations(rows, docs) -> None:
    laws = Condition(name="law", comparison_operator="in", value=["中华人民共和国医师法", "中华人民共和国传染病防治法"])
    early = Condition(name="article_no", comparison_operator="≤", value=5)
    both = MetadataFilter([laws, early])
    either = MetadataFilter([laws, early], any_of=True)
    got_both, got_either = docs.filter_rids(both).tolist(), docs.filter_rids(either).tolist()
    assert got_both == _expected(rows, both) and got_either == _expected(rows, either)
    assert 0 < len(got_both) < len(got_either) < len(rows)


def test_mapping_shorthand_is_is_and_in(rows, docs) -> None:
    spec = as_filter({"law": "中华人民共和国医师法", "article_no": [1, 2, 3]})
    assert spec is not None
    got = docs.filter_rids(spec).tolist()
    assert got == _expected(rows, spec) and len(got) == 3
    assert as_filter({}) is None and as_filter(None) is None


def test_hostile_filters_are_filter_errors_not_sql_errors(docs) -> None:
    with pytest.raises(FilterError, match="at most 32"):
        to_sql(MetadataFilter([Condition(name=f"k{i}", comparison_operator="is", value="v") for i in range(1000)]))
    with pytest.raises(ValidationError, match="pattern"):  # refused as it is built …
        Condition(name='law") OR 1=1 --', comparison_operator="is", value="x")
    hostile = Condition.model_construct(name='law") OR 1=1 --', comparison_operator="is", value="x")
    with pytest.raises(FilterError, match="invalid filter field"):  # … and by the SQL layer all the same
        to_sql(MetadataFilter([hostile]))
    with pytest.raises(FilterError, match="non-empty list"):
        as_filter({"law": []})
    injected = MetadataFilter([Condition(name="law", comparison_operator="is", value="x' OR '1'='1")])
    assert docs.filter_rids(injected).tolist() == []
