"""zhrag's one filter language: Dify-style metadata conditions, compiled to SQL over the chunk table.

A filter is a list of conditions joined by ``and``/``or`` (Dify's ``metadata_condition``). The
``{"law": "…", "article_no": [1, 2]}`` mapping that ``/search`` and ``--filter`` accept is shorthand for
``is``/``in`` conditions joined by ``and``. The searcher turns a filter into the row ids that may be
returned and hands them to both retrieval legs, so ``top_k`` matching chunks come back whenever they
exist (never a post-filter over a few candidates).

Semantics follow Dify: a field's value is compared as text (a list as its items joined by spaces);
``=``, ``≠``, ``>``, ``<``, ``≥``, ``≤`` compare numbers (a value that is not a number never matches);
a missing field satisfies only the negative operators (``is not``, ``not in``, ``not contains``, ``≠``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from retrieval.errors import UserError

__all__ = [
    "Condition",
    "Operator",
    "MetadataFilter",
    "FilterError",
    "as_filter",
    "to_sql",
    "sql_number",
    "COLUMN_FIELDS",
    "MAX_CONDITIONS",
    "MAX_VALUES",
    "FieldName",
    "FIELD_PATTERN",
]

Operator = Literal[
    "contains",
    "not contains",
    "start with",
    "end with",
    "is",
    "is not",
    "in",
    "not in",
    "empty",
    "not empty",
    "=",
    "≠",
    ">",
    "<",
    "≥",
    "≤",
    "before",
    "after",
]
NEGATIVE: frozenset[str] = frozenset({"is not", "not in", "not contains", "≠"})
NUMERIC = {"=": "=", "≠": "!=", ">": ">", "<": "<", "≥": ">=", "≤": "<="}
COLUMN_FIELDS: Mapping[str, str] = {"doc_id": "doc_id", "source": "source", "title": "title", "chunk_id": "id"}
"""Fields read from the chunk row itself rather than its metadata (``chunk_id`` is the row's ``id``)."""
MAX_CONDITIONS = 32
MAX_VALUES = 1000
FIELD_PATTERN = r"^[\w.-]{1,64}$"
_FIELD = re.compile(FIELD_PATTERN)
FieldName = Annotated[str, StringConstraints(pattern=FIELD_PATTERN)]
"""A metadata field a filter may name: letters, digits, ``_ . -`` and CJK, at most 64."""
SQL_NUMBER = "zhrag_number"
"""Name under which :func:`sql_number` is registered on the SQLite connection."""


class FilterError(UserError, ValueError):
    """A metadata filter is malformed."""


class Condition(BaseModel):
    """One condition: metadata field ``name`` (or any of several), an operator and a value."""

    model_config = ConfigDict(strict=True)

    name: FieldName | Annotated[list[FieldName], Field(min_length=1, max_length=MAX_CONDITIONS)]
    comparison_operator: Operator
    value: str | int | float | Annotated[list[str], Field(min_length=1, max_length=MAX_VALUES)] | None = None


@dataclass(frozen=True)
class MetadataFilter:
    """Conditions that all (``any_of=False``) or any (``any_of=True``) must hold."""

    conditions: Sequence[Condition]
    any_of: bool = False

    @classmethod
    def from_mapping(cls, filters: Mapping[str, Any]) -> MetadataFilter:
        """``{"law": "X", "article_no": [1, 2]}``: field ``is`` a value, or ``in`` a list, for every key."""
        conditions = []
        for key, value in filters.items():
            _field(key)  # a bad name is the filter's error, named, before a condition is built
            if isinstance(value, list):
                if not value:
                    raise FilterError(f"filter {key!r} needs a string/number or a non-empty list of them")
                conditions.append(Condition(name=key, comparison_operator="in", value=[_text(v) for v in value]))
            elif isinstance(value, (str, int, float)):
                conditions.append(Condition(name=key, comparison_operator="is", value=_text(value)))
            else:
                raise FilterError(f"filter {key!r} needs a string/number or a non-empty list of them")
        return cls(conditions)


def as_filter(filters: MetadataFilter | Mapping[str, Any] | None) -> MetadataFilter | None:
    """A filter from either form (``None`` or no conditions: no filter)."""
    if filters is None:
        return None
    result = filters if isinstance(filters, MetadataFilter) else MetadataFilter.from_mapping(filters)
    return result if result.conditions else None


def sql_number(value: Any) -> float | None:
    """A text metadata value as a number, as Python's ``float`` reads it (``None`` when it is not one)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str:
    """How Dify's comparisons see a value: ``True`` for JSON true, ``1.5`` for 1.5, ``abc`` for "abc"."""
    return str(value)


def _field(name: str) -> tuple[str, str, str, list[Any]]:
    """SQL for (text value, is-missing, number) of a field, and the parameters they use (in order)."""
    if not _FIELD.match(name):
        raise FilterError(f"invalid filter field {name!r} (letters, digits, _ . - and CJK, at most 64)")
    column = COLUMN_FIELDS.get(name)
    if column is not None:
        return column, "0", f"{SQL_NUMBER}({column})", []
    # Every placeholder below reads the same JSON path; SQLite numbers them ?1 so it is bound once.
    text = (
        "(CASE json_type(metadata, ?1)"
        " WHEN 'array' THEN (SELECT group_concat(CAST(value AS TEXT), ' ') FROM json_each(metadata, ?1))"
        " WHEN 'true' THEN 'True' WHEN 'false' THEN 'False'"
        " ELSE CAST(json_extract(metadata, ?1) AS TEXT) END)"
    )
    missing = "(json_type(metadata, ?1) IS NULL OR json_type(metadata, ?1) = 'null')"
    number = (
        "(CASE json_type(metadata, ?1) WHEN 'integer' THEN json_extract(metadata, ?1)"
        " WHEN 'real' THEN json_extract(metadata, ?1)"
        f" WHEN 'text' THEN {SQL_NUMBER}(json_extract(metadata, ?1))"
        " WHEN 'true' THEN 1.0 WHEN 'false' THEN 0.0 END)"
    )
    return text, missing, number, [f'$."{name}"']


def _empty(text: str, missing: str) -> str:
    return f"({missing} OR {text} = '' OR {text} IS NULL)"


def _condition_sql(cond: Condition, name: str) -> tuple[str, list[Any]]:
    """SQL for one operator on one field; its own parameter numbering starts at ``?1`` (renumbered later)."""
    text, missing, number, path = _field(name)
    op, value = cond.comparison_operator, cond.value
    if op == "empty":
        return _empty(text, missing), path
    if op == "not empty":
        return f"NOT {_empty(text, missing)}", path
    prefix = f"{missing} OR " if op in NEGATIVE else f"NOT {missing} AND "
    if op in NUMERIC:
        expected = sql_number(value)
        if expected is None:  # Dify: a comparison with a non-number never holds
            never = "(0 AND ?1 IS NULL)" if path else "0"
            return (f"({missing})" if op == "≠" else never), path
        return f"({prefix}COALESCE({number} {NUMERIC[op]} ?2, 0))", [*path, expected]
    if op in ("in", "not in"):
        values = value if isinstance(value, list) else [value]
        if not values:
            raise FilterError(f"{name!r} {op} needs at least one value")
        if len(values) > MAX_VALUES:
            raise FilterError(f"at most {MAX_VALUES} values in one condition, got {len(values)}")
        marks = ",".join(f"?{i + 2}" for i in range(len(values)))
        inside = f"{text} {'NOT ' if op == 'not in' else ''}IN ({marks})"
        return f"({prefix}COALESCE({inside}, 0))", [*path, *(_text(v) for v in values)]
    expected_text = _text(value)
    sql = {
        "contains": "instr({t}, ?2) > 0",
        "not contains": "instr({t}, ?2) = 0",
        "start with": "substr({t}, 1, length(?2)) = ?2",
        "end with": "(length(?2) = 0 OR substr({t}, -length(?2)) = ?2)",
        "is": "{t} = ?2",
        "is not": "{t} != ?2",
        "before": "{t} < ?2",
        "after": "{t} > ?2",
    }[op].format(t=text)
    return f"({prefix}COALESCE({sql}, 0))", [*path, expected_text]


def _renumber(sql: str, offset: int, has_path: bool) -> str:
    """Shift ``?N`` placeholders by ``offset`` (a column field has no path, so its values start at ``?1``)."""

    def shift(match: re.Match[str]) -> str:
        number = int(match.group(1)) - (0 if has_path else 1)
        return f"?{number + offset}"

    return re.sub(r"\?(\d+)", shift, sql)


def to_sql(spec: MetadataFilter) -> tuple[str, list[Any]]:
    """A ``WHERE`` clause over the chunk table (numbered ``?N`` placeholders) and its parameters.

    Raises:
        FilterError: too many conditions or values, or an invalid field name.
    """
    if len(spec.conditions) > MAX_CONDITIONS:
        raise FilterError(f"at most {MAX_CONDITIONS} filter conditions, got {len(spec.conditions)}")
    values = sum(len(c.value) if isinstance(c.value, list) else 1 for c in spec.conditions)
    if values > MAX_VALUES:
        raise FilterError(f"at most {MAX_VALUES} filter values in all, got {values}")
    clauses: list[str] = []
    params: list[Any] = []
    for cond in spec.conditions:
        names = cond.name if isinstance(cond.name, list) else [cond.name]
        if not names or len(names) > MAX_CONDITIONS:
            raise FilterError(f"a condition names 1..{MAX_CONDITIONS} fields, got {len(names)}")
        alternatives = []
        for name in names:
            sql, own = _condition_sql(cond, name)
            alternatives.append(_renumber(sql, len(params), name not in COLUMN_FIELDS))
            params.extend(own)
        clauses.append("(" + " OR ".join(alternatives) + ")")
    joiner = " OR " if spec.any_of else " AND "
    return joiner.join(clauses) or "1", params
