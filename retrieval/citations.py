"""Statute citations: find every 《law》第N条 in a text, resolve it against an index, verify an LLM's answer.

Parsing is a few regular expressions over the text (no model call): laws by full title, by the title
without 中华人民共和国, by a short name from a table (民诉法) or a user file, in 《》 or bare; articles in
Chinese or Arabic numerals, 之一, 第M款, 第K项; Traditional characters and full-width digits; 本法/该法/同法
refer to the last law named. A citation with no law of its own takes the last law named before it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval.text.normalize import FULLWIDTH_TABLE, to_simplified
from retrieval.text.numerals import CN_NUMERAL_CHARS, cn_to_int, int_to_cn

__all__ = ["Citation", "Verdict", "CitationIndex", "canonical_article", "COUNTRY_PREFIX", "SHORT_NAMES"]

COUNTRY_PREFIX = "中华人民共和国"
SHORT_NAMES: Mapping[str, str] = {
    "民诉法": "民事诉讼法",
    "刑诉法": "刑事诉讼法",
    "行诉法": "行政诉讼法",
    "劳动合同法实施条例": "劳动合同法实施条例",
    "个保法": "个人信息保护法",
    "消法": "消费者权益保护法",
    "消保法": "消费者权益保护法",
    "反垄断法": "反垄断法",
    "治安处罚法": "治安管理处罚法",
}
"""Common short names (written without 中华人民共和国) and the title they stand for."""
_REFERS_BACK = ("本法", "该法", "同法", "此法", "上述法律", "前述法律")
_NUM = rf"[{CN_NUMERAL_CHARS}\d]+"
_ARTICLE = (
    rf"第\s*(?P<num>{_NUM})\s*条(?:\s*之\s*(?P<sub>{_NUM}))?"
    rf"(?:\s*第\s*(?P<para>{_NUM})\s*款)?(?:\s*第\s*(?P<item>{_NUM})\s*项)?"
)


def canonical_article(number: int, sub: int | None = None) -> str:
    """第一千一百六十五条, 第一百二十条之一."""
    return f"第{int_to_cn(number)}条" + (f"之{int_to_cn(sub)}" if sub else "")


@dataclass(frozen=True)
class Citation:
    """One citation found in a text.

    Attributes:
        law: The index's full title of the cited law (``None``: not resolved to a law in the index).
        law_text: The law as written (``""`` when the citation named none).
        article: Canonical article label (第一千一百六十五条).
        article_no: The article's number.
        sub: 之一 -> 1 (``None`` for a plain article).
        paragraph: 第M款, if given.
        item: 第K项, if given.
        span: (start, end) of the citation in the text.
    """

    law: str | None
    law_text: str
    article: str
    article_no: int
    sub: int | None
    paragraph: int | None
    item: int | None
    span: tuple[int, int]


@dataclass(frozen=True)
class Verdict:
    """Whether a citation names an article the index holds."""

    citation: Citation
    found: bool
    reason: str | None = None
    """``unknown law``, ``no law named`` or ``no such article`` (the law's last article is said)."""
    rids: list[int] = field(default_factory=list)
    """Row ids of the article's chunks, in order."""
    version: str | None = None
    """The law's version (date) the article was found in."""
    newer_version: str | None = None
    """A newer version of the law the index holds, where the article was not found (it may have moved)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of one citation."""
        c = self.citation
        return {
            "law": c.law,
            "law_text": c.law_text,
            "article": c.article,
            "paragraph": c.paragraph,
            "item": c.item,
            "span": list(c.span),
            "found": self.found,
            "reason": self.reason,
            "version": self.version,
            "newer_version": self.newer_version,
        }


def _sub(value: str | None) -> int | None:
    return cn_to_int(value) if value else None


def _same_length_simplified(text: str) -> str:
    """Half-width digits and Simplified characters at the same positions (spans index the original text)."""
    text = text.translate(FULLWIDTH_TABLE)
    converted = to_simplified(text)
    if len(converted) == len(text):
        return converted
    return "".join(one if len(one := to_simplified(ch)) == 1 else ch for ch in text)


class CitationIndex:
    """The articles an index holds, by law and number, and the parser built from its law titles.

    Args:
        articles: ``(law, article label, article_no, row id)`` of every statute chunk, in index order.
        aliases: Extra ``{short name: full title or its name without 中华人民共和国}``.
    """

    def __init__(
        self,
        articles: Iterable[tuple[str, str, int, int] | tuple[str, str, int, int, str | None, str]],
        aliases: Mapping[str, str] | None = None,
    ):
        # (law, number, sub) -> version -> source document -> row ids (a law may be held twice, or in
        # several versions; a citation resolves to the newest version's first copy)
        self._rids: dict[tuple[str, int, int | None], dict[str, dict[str, list[int]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(list))
        )
        self._last: dict[str, int] = {}
        self._versions: dict[str, set[str]] = defaultdict(set)
        for row in articles:
            law, label, number, rid = row[:4]
            version, source = (row[4] or "", row[5]) if len(row) > 4 else ("", "")
            sub = re.search(rf"之({_NUM})$", label)
            key = (law, int(number), _sub(sub.group(1)) if sub else None)
            self._rids[key][version][source].append(rid)
            self._last[law] = max(self._last.get(law, 0), int(number))
            self._versions[law].add(version)
        self.laws = sorted(self._last)
        self._aliases = self._alias_table(aliases or {})
        names = sorted(self._aliases, key=len, reverse=True)
        bare = "|".join(re.escape(n) for n in names) or "(?!)"
        refers = "|".join(_REFERS_BACK)
        self._pattern = re.compile(
            rf"(?:《(?P<quoted>[^》\n]{{1,60}})》|(?P<bare>{bare})|(?P<refer>{refers}))?\s*{_ARTICLE}"
        )
        self._mention = re.compile(rf"《(?P<quoted>[^》\n]{{1,60}})》|(?P<bare>{bare})")

    @classmethod
    def from_docstore(cls, docs: Any, alias_file: Path | None = None) -> CitationIndex:
        """Built from a docstore's statute chunks (those with ``law`` and ``article_no`` metadata)."""
        rows = (
            (meta["law"], meta.get("article", ""), meta["article_no"], rid, meta.get("version"), meta.get("source", ""))
            for rid, _, _, meta in docs.iter_fields()
            if meta.get("law") and isinstance(meta.get("article_no"), int)
        )
        aliases = {}
        if alias_file is not None:
            for line in alias_file.read_text(encoding="utf-8").splitlines():
                if line.strip() and not line.startswith("#"):
                    short, _, full = line.partition("\t")
                    if full.strip():
                        aliases[short.strip()] = full.strip()
        return cls(rows, aliases)

    def _alias_table(self, extra: Mapping[str, str]) -> dict[str, str]:
        table: dict[str, str] = {}
        for law in self.laws:
            table.setdefault(law, law)
            short = law.removeprefix(COUNTRY_PREFIX)
            if len(short) >= 2:
                table.setdefault(short, law)
        for short, full in {**SHORT_NAMES, **extra}.items():
            target = table.get(full) or table.get(full.removeprefix(COUNTRY_PREFIX))
            if target is not None:
                table.setdefault(short, target)
        return table

    def resolve_law(self, name: str) -> str | None:
        """The index's full title for a law as written (``None`` when the index holds no such law)."""
        name = re.sub(r"\s+", "", name)
        if name in self._aliases:
            return self._aliases[name]
        stripped = re.sub(r"[（(]\d{4}.*?[)）]$", "", name)  # 《X法(2018修正)》
        return self._aliases.get(stripped)

    def parse(self, text: str) -> list[Citation]:
        """Every citation in ``text``, in order (spans index the original text)."""
        if "条" not in text and "條" not in text:  # no article, no citation: skip the conversion and the scan
            return []
        work = _same_length_simplified(text)
        mentions = [(m.end(), m.group("quoted") or m.group("bare")) for m in self._mention.finditer(work)]
        found: list[Citation] = []
        last: tuple[str | None, str] | None = None  # (resolved law, as written) of the last law named
        mention_at = 0
        for match in self._pattern.finditer(work):
            while mention_at < len(mentions) and mentions[mention_at][0] <= match.start():
                name = mentions[mention_at][1]
                last = (self.resolve_law(name), name)
                mention_at += 1
            written = match.group("quoted") or match.group("bare")
            if written:
                law, law_text = self.resolve_law(written), written
                last = (law, written)
            elif last is not None:  # 本法 / 该法 / a bare 第N条: the last law named
                law, law_text = last
            else:
                law, law_text = None, ""
            try:
                number, sub = cn_to_int(match.group("num")), _sub(match.group("sub"))
                paragraph, item = _sub(match.group("para")), _sub(match.group("item"))
                article = canonical_article(number, sub)
            except ValueError:
                continue
            start = match.start("quoted") - 1 if match.group("quoted") else match.start()
            found.append(Citation(law, law_text, article, number, sub, paragraph, item, (start, match.end())))
        return found

    def verify(self, citation: Citation, admitted: set[int] | None = None) -> Verdict:
        """Whether the cited article exists in the index, and its row ids: the newest version's, or with
        ``admitted`` (a search filter's row ids) the newest version the filter admits."""
        if citation.law is None:
            return Verdict(citation, False, "unknown law" if citation.law_text else "no law named")
        versions = self._rids.get((citation.law, citation.article_no, citation.sub))
        if not versions:
            last = self._last.get(citation.law, 0)
            reason = f"no such article ({citation.law} has {canonical_article(last) if last else 'no articles'} last)"
            return Verdict(citation, False, reason)
        choices = [
            (version, rids)
            for version in sorted(versions, reverse=True)
            for rids in versions[version].values()
            if admitted is None or rids[0] in admitted
        ]
        if not choices:
            return Verdict(citation, False, "the filter excludes this article")
        matched, rids = choices[0]
        newest = max(self._versions[citation.law])
        return Verdict(citation, True, None, list(rids), matched or None, newest if newest > matched else None)

    def check(self, text: str, admitted: set[int] | None = None) -> list[Verdict]:
        """Parse and verify every citation in ``text``."""
        return [self.verify(c, admitted) for c in self.parse(text)]

    def cited_rids(self, texts: Sequence[str], allowed: Iterable[int] | None = None) -> tuple[list[int], list[Verdict]]:
        """Row ids of the articles cited by the first text that cites any (for a search), and the verdicts.

        ``allowed`` (a search filter's row ids) is only turned into a set when a text cites something.
        """
        for text in texts:
            citations = self.parse(text)
            if citations:
                admitted = set(map(int, allowed)) if allowed is not None else None
                verdicts = [self.verify(c, admitted) for c in citations]
                rids = [rid for v in verdicts if v.found for rid in v.rids]
                return list(dict.fromkeys(rids)), verdicts
        return [], []
