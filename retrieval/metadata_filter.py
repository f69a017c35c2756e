"""Dify-style metadata conditions evaluated on a chunk's metadata (pure functions)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel

__all__ = ["Condition", "Operator", "matches", "evaluate"]

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


class Condition(BaseModel):
    """One condition: metadata field ``name``, an operator and a value."""

    name: str | list[str]
    comparison_operator: Operator
    value: str | int | float | list[str] | None = None


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def evaluate(actual: Any, op: str, expected: Any) -> bool:
    """Whether one metadata value satisfies ``op expected``."""
    if op == "empty":
        return actual in (None, "", [], {})
    if op == "not empty":
        return actual not in (None, "", [], {})
    if actual is None:
        return op in ("is not", "not in", "not contains", "≠")
    text = " ".join(map(str, actual)) if isinstance(actual, list) else str(actual)
    values = expected if isinstance(expected, list) else [expected]
    if op == "contains":
        return str(expected) in text
    if op == "not contains":
        return str(expected) not in text
    if op == "start with":
        return text.startswith(str(expected))
    if op == "end with":
        return text.endswith(str(expected))
    if op == "is":
        return text == str(expected)
    if op == "is not":
        return text != str(expected)
    if op == "in":
        return text in map(str, values)
    if op == "not in":
        return text not in map(str, values)
    if op in ("before", "after"):
        return text < str(expected) if op == "before" else text > str(expected)
    a, b = _number(actual), _number(expected)
    if a is None or b is None:
        return False
    return {"=": a == b, "≠": a != b, ">": a > b, "<": a < b, "≥": a >= b, "≤": a <= b}[op]


def matches(metadata: Mapping[str, Any], conditions: Sequence[Condition], any_of: bool = False) -> bool:
    """Whether ``metadata`` satisfies all (or, with ``any_of``, any) conditions."""
    results = []
    for cond in conditions:
        names = cond.name if isinstance(cond.name, list) else [cond.name]
        results.append(any(evaluate(metadata.get(n), cond.comparison_operator, cond.value) for n in names))
    return any(results) if any_of else all(results)
