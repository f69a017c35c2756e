"""Chinese numerals as used in statute citations: 第一千一百六十五条 <-> 1165."""

from __future__ import annotations

__all__ = ["cn_to_int", "int_to_cn", "CN_NUMERAL_CHARS"]

_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10000}
CN_NUMERAL_CHARS = "".join(_DIGITS) + "".join(_UNITS)
_WRITTEN = "零一二三四五六七八九"


def cn_to_int(numeral: str) -> int:
    """Chinese (or Arabic) numeral to int: ``一千二百六十`` -> 1260, ``十五`` -> 15, ``105`` -> 105.

    Raises:
        ValueError: for anything else.
    """
    if numeral.isdigit():
        return int(numeral)
    total, section, digit = 0, 0, 0
    for ch in numeral:
        if ch in _DIGITS:
            digit = _DIGITS[ch]
        elif ch in _UNITS:
            unit = _UNITS[ch]
            if unit == 10000:
                total += (section + digit) * unit
                section = 0
            else:
                section += (digit or 1) * unit
            digit = 0
        else:
            raise ValueError(f"not a Chinese numeral: {numeral!r}")
    return total + section + digit


def int_to_cn(number: int) -> str:
    """How statutes write a number (1..99,999): 1165 -> 一千一百六十五, 105 -> 一百零五, 12 -> 十二."""
    if not 0 < number < 100_000:
        raise ValueError(f"cannot write {number} as a statute numeral")
    if number < 10:
        return _WRITTEN[number]
    if number < 20:
        return "十" + (_WRITTEN[number % 10] if number % 10 else "")
    parts: list[str] = []
    pending_zero = False
    for value, unit in ((10_000, "万"), (1000, "千"), (100, "百"), (10, "十"), (1, "")):
        digit = number // value % 10
        if digit:
            if pending_zero:
                parts.append("零")
            parts.append(_WRITTEN[digit] + unit)
            pending_zero = False
        elif parts:
            pending_zero = True
    return "".join(parts)
