"""Statute citations: find every 《law》第N条 in a text, resolve it against an index, verify an LLM's answer.

Parsing is a few regular expressions over the text (no model call): laws by full title, by the title
without 中华人民共和国, by a short name from a table (民诉法) or a user file, in 《》 or bare; articles in
Chinese or Arabic numerals, 之一, 第M款, 第K项; Traditional characters and full-width digits; 本法/该法/同法
refer to the last law named. A citation with no law of its own takes the last law named before it.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval.text.normalize import FULLWIDTH_TABLE, to_simplified
from retrieval.text.numerals import CN_NUMERAL_CHARS, cn_to_int, int_to_cn

__all__ = [
    "Citation",
    "Verdict",
    "CitationIndex",
    "KnownLaw",
    "known_laws",
    "canonical_article",
    "COUNTRY_PREFIX",
    "SHORT_NAMES",
    "REASONS",
]

COUNTRY_PREFIX = "中华人民共和国"
SHORT_NAMES: Mapping[str, str] = {
    "劳动合同法实施条例": "劳动合同法实施条例",
    "反垄断法": "反垄断法",
}
"""Short names kept in code (the bundled title list, ``law_titles_extra.tsv``, holds the others)."""
REASONS = (
    "no law named",
    "unknown law",
    "law not in index",
    "article not in index",
    "no such article",
    "the filter excludes this article",
)
"""Why a citation is not found: no law before it; a name that is no known law; a real law (in the bundled
list) that this index does not hold; an article of a law the index holds only in part; an article the law
does not have; an article a search filter leaves out."""
_TITLE_SUFFIXES = ("法典", "法", "条例", "规定", "办法", "细则", "解释", "决定", "规则", "通则")
_LAW_NOUNS = ("法", "法律", "条例", "规定", "办法", "细则", "解释", "司法解释", "决定", "规则")
# 本法 / 该条例 / 上述规定 …: the last law named. A bare 司法解释 / 相关规定 names no law of its own either.
_REFERS_BACK = tuple(
    sorted(
        {
            f"{d}{n}"
            for d in ("本", "该", "同", "此", "这一", "这些", "该项", "上述", "前述", "上列", "以上", "相关", "有关")
            for n in _LAW_NOUNS
        }
        | {"司法解释", "法律", "法规"},
        key=len,
        reverse=True,
    )
)
# Words that come before a law's name in running text and are no part of it ("根据网络购物法" names 网络购物法).
_LEAD_WORDS = tuple(
    sorted(
        "根据 依据 依照 按照 参照 遵照 比照 对照 适用 违反 违背 援引 引用 参见 详见 参考 结合 另见 另外 此外 同时 "
        "符合 遵守 执行 落实 贯彻 实施 履行 触犯 违犯 属于 构成 见于 载于 出自 基于 参看 查阅 援用 对比 体现 明确 "
        "以及 或者 并且 而且 还有 及其 我国 现行 修订后 修改后 修正后 最新 例如 比如 譬如 对于 因为 由于 所以 因此 "
        "但是 可以 应当 应该 需要 已经 已被 已 被 另 和 与 及 或 依 据 按 见 即 在 是 了 的 也 还 都 如 其 这 那 而 但 "
        "须 需 请 将 把 从 向 让 给 用 以 对 并".split(),
        key=len,
        reverse=True,
    )
)
_CITING_VERBS = (
    "根据",
    "依据",
    "依照",
    "按照",
    "参照",
    "遵照",
    "适用",
    "违反",
    "违背",
    "援引",
    "引用",
    "依",
    "据",
    "按",
)
# Ordinary words that end like a title (治疗方法, 计算办法) but name no law.
_NOT_LAWS = ("方法", "疗法", "做法", "看法", "说法", "想法", "用法", "写法", "算法", "手法", "依法", "违法", "合法")
_HAN = r"\u3400-\u9fff"
_QUOTED = re.compile(r"《(?P<quoted>(?:[^《》\n]|《[^《》\n]*》){1,120})》")
_NUM = rf"[{CN_NUMERAL_CHARS}\d]+"
_ARTICLE = re.compile(
    rf"第\s*(?P<num>{_NUM})\s*条(?:\s*之\s*(?P<sub>{_NUM}))?"
    rf"(?:\s*第\s*(?P<para>{_NUM})\s*款)?(?:\s*第\s*(?P<item>{_NUM})\s*项)?"
)
_HAN_RUN = re.compile(rf"[{_HAN}]+")
_AFTER_MENTION = ("规定", "的规定", "中", "里")
_MAX_NAME = 60
_RESOURCES = Path(__file__).resolve().parent / "text" / "resources"


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
    """Why not found: one of :data:`REASONS` (``no such article`` says the law's last article)."""
    rids: list[int] = field(default_factory=list)
    """Row ids of the article's chunks, in order."""
    version: str | None = None
    """The law's version (date) the article was found in."""
    newer_version: str | None = None
    """A newer version of the law the index holds, where the article was not found (it may have moved)."""
    title: str | None = None
    """For a law the index does not hold: its full title from the bundled list."""
    replaced_by: str | None = None
    """For a repealed law the index does not hold: the law that replaced it."""

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
            "title": self.title,
            "replaced_by": self.replaced_by,
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


def _key(name: str) -> str:
    """A law name as a lookup key: no spaces or title marks, no version note (《X法(2018修正)》)."""
    name = re.sub(r"[\s《》〈〉]", "", name)
    return re.sub(r"[（(][^（）()]*\d{4}[^（）()]*[)）]$", "", name)


@dataclass(frozen=True)
class KnownLaw:
    """A national law or regulation from the bundled title list (``retrieval/text/resources``)."""

    title: str
    last_article: int
    """Its highest article number (0: not recorded)."""
    replaced_by: str | None = None
    """For a repealed law, the law that replaced it."""


@functools.cache
def known_laws() -> dict[str, KnownLaw]:
    """Every bundled title, its name without 中华人民共和国 and its common short names -> the law."""
    laws: dict[str, KnownLaw] = {}
    names: dict[str, set[str]] = defaultdict(set)
    for file in ("law_titles.tsv", "law_titles_extra.tsv"):
        for line in (_RESOURCES / file).read_text(encoding="utf-8").splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            title, last, status, shorts = (line.split("\t") + ["", "", ""])[:4]
            old = laws.get(title)
            replaced = status.removeprefix("repealed:").strip() or None
            last_no = max(int(last or 0), old.last_article if old else 0)
            laws[title] = KnownLaw(title, last_no, replaced or (old.replaced_by if old else None))
            names[title].update(s.strip() for s in shorts.split(",") if s.strip())
    table: dict[str, KnownLaw] = {}
    for title, law in laws.items():
        for name in (title, title.removeprefix(COUNTRY_PREFIX), *names[title]):
            if len(_key(name)) >= 2:
                table.setdefault(_key(name), law)
    return table


def _strip_lead(name: str) -> tuple[str, bool]:
    """``name`` without the words before it (根据, 另外, 我国 …), and whether one of them cites (根据)."""
    cited = False
    while True:
        lead = next((w for w in _LEAD_WORDS if name.startswith(w) and len(name) > len(w)), None)
        if lead is None:
            return name, cited
        cited = cited or lead in _CITING_VERBS
        name = name[len(lead) :]


def _last_clause(run: str) -> str:
    """The part of a run of Chinese characters after its last clause word (这一规定已被民法典 -> 民法典)."""
    cut = max((run.rfind(w) + len(w) for w in ("了", "是", "在", "即", "也", "还", "都", "被") if w in run), default=0)
    at_de = run.rfind("的")
    # 若干问题的解释 / 关于…的规定 keep their 的; 修改后的网络购物法 drops what comes before it.
    if at_de >= 0 and not any(run[at_de + 1 :] == s for s in _TITLE_SUFFIXES):
        cut = max(cut, at_de + 1)
    return run[cut:]


def _stands_alone(before: str) -> bool:
    """Whether what precedes a word leaves it a word of its own: nothing, or a lead word (依据, 违反, 和)."""
    return not before or before.endswith(_LEAD_WORDS)


def _refers_back(run: str) -> bool:
    """Whether a run ends with 本法 / 该条例 / 上述规定 standing alone (违反该法), not inside a title (劳动合同法)."""
    word = next((w for w in _REFERS_BACK if run.endswith(w)), None)
    return word is not None and _stands_alone(run[: -len(word)])


class CitationIndex:
    """The articles an index holds, by law and number, and the parser built from its law titles.

    Args:
        articles: ``(law, article label, article_no, row id)`` of every statute chunk, in index order
            (optionally with the law's version and the source file).
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
        self._numbers: dict[str, set[int]] = defaultdict(set)
        self._versions: dict[str, set[str]] = defaultdict(set)
        for row in articles:
            law, label, number, rid = row[:4]
            version, source = (row[4] or "", row[5]) if len(row) > 4 else ("", "")
            sub = re.search(rf"之({_NUM})$", label)
            key = (law, int(number), _sub(sub.group(1)) if sub else None)
            self._rids[key][version][source].append(rid)
            self._numbers[law].add(int(number))
            self._versions[law].add(version)
        self.laws = sorted(self._numbers)
        self._aliases = self._alias_table(aliases or {})
        self._known = known_laws()

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
            table.setdefault(_key(law), law)
            short = law.removeprefix(COUNTRY_PREFIX)
            if len(short) >= 2:
                table.setdefault(_key(short), law)
        bundled = known_laws()
        for name, known in bundled.items():  # the bundled short names of the laws this index holds
            if known.title in self._numbers or known.title.removeprefix(COUNTRY_PREFIX) in self._numbers:
                table.setdefault(name, table[_key(known.title)] if _key(known.title) in table else known.title)
        for short, full in {**SHORT_NAMES, **extra}.items():
            target = table.get(_key(full)) or table.get(_key(full.removeprefix(COUNTRY_PREFIX)))
            if target is not None:
                table.setdefault(_key(short), target)
        return table

    def resolve_law(self, name: str) -> str | None:
        """The index's full title for a law as written (``None`` when the index holds no such law)."""
        return self._aliases.get(_key(name))

    def _is_known(self, name: str) -> bool:
        key = _key(name)
        return key in self._aliases or key in self._known

    def _name_in_run(self, run: str, before_article: bool) -> str | None:
        """The law named at the end of a run of Chinese characters, as written, or ``None``.

        A known name (in the index or the bundled list) counts when what comes before it is a lead word
        (依据数据安全法) and not more of a title (网络数据安全法 is a law of its own). An unknown name
        counts right before 第N条, or after a citing verb (根据网络购物法的规定).
        """
        run = run[-_MAX_NAME:]
        for size in range(len(run), 1, -1):
            name = run[-size:]
            if self._is_known(name):
                rest = run[:-size]
                if _stands_alone(rest):
                    return name
                break
        if not run.endswith(_TITLE_SUFFIXES):
            return None
        name, cited = _strip_lead(_last_clause(run))
        if len(name) < 3 or name.endswith(_NOT_LAWS) or name in _REFERS_BACK or not (before_article or cited):
            return None
        if "的" in name and name[: name.rfind("的")].endswith(_TITLE_SUFFIXES):  # 网络购物法的规定: its provisions
            return None
        return name

    def _mentions(self, work: str, articles: list[re.Match[str]]) -> list[tuple[int, int, tuple[int, int] | None]]:
        """``(start, end, name span)`` of every law named in ``work``, in order of ``end``; the name span is
        ``None`` for a word that refers back (本法, 该条例) right before an article."""
        found = [(m.start(), m.end(), m.span("quoted")) for m in _QUOTED.finditer(work)]
        masked = list(work)
        for start, end in [m.span() for m in articles] + [(a, b) for a, b, _ in found]:
            masked[start:end] = "\0" * (end - start)
        starts = {m.start() for m in articles}
        for run in _HAN_RUN.finditer("".join(masked)):
            text, at = run.group(), run.start()
            before_article = len(work) - len(work[run.end() :].lstrip()) in starts
            if before_article and _refers_back(text):
                found.append((run.end(), run.end(), None))
                continue
            for end in range(2, len(text) + 1):
                last = end == len(text)
                if not (last or text.startswith(_AFTER_MENTION, end)) or not text[:end].endswith(_TITLE_SUFFIXES):
                    continue
                name = self._name_in_run(text[:end], before_article=last and before_article)
                if name is not None:
                    found.append((at + end - len(name), at + end, (at + end - len(name), at + end)))
        return sorted(found, key=lambda m: m[1])

    def parse(self, text: str) -> list[Citation]:
        """Every citation in ``text``, in order (spans index the original text).

        Each citation takes the law named right before it, else the last law named before it (本法,
        a bare 第N条) — known or not, so an invented law's article is never pinned on another law.
        """
        if "条" not in text and "條" not in text:  # no article, no citation: skip the conversion and the scan
            return []
        work = _same_length_simplified(text)
        articles = list(_ARTICLE.finditer(work))
        mentions = self._mentions(work, articles)
        found: list[Citation] = []
        law: tuple[str | None, str] | None = None  # (index title, as written) of the last law named
        at = 0
        for match in articles:
            start = match.start()
            while at < len(mentions) and mentions[at][1] <= match.start():
                m_start, m_end, name = mentions[at]
                if name is not None:
                    law = (self.resolve_law(work[name[0] : name[1]]), text[name[0] : name[1]])
                if not work[m_end : match.start()].strip():  # the law written right before the article
                    start = m_start
                at += 1
            try:
                number, sub = cn_to_int(match.group("num")), _sub(match.group("sub"))
                paragraph, item = _sub(match.group("para")), _sub(match.group("item"))
                article = canonical_article(number, sub)
            except ValueError:
                continue
            resolved, written = law if law is not None else (None, "")
            found.append(Citation(resolved, written, article, number, sub, paragraph, item, (start, match.end())))
        return found

    def verify(self, citation: Citation, admitted: set[int] | None = None) -> Verdict:
        """Whether the cited article exists in the index, and its row ids: the newest version's, or with
        ``admitted`` (a search filter's row ids) the newest version the filter admits."""
        if citation.law is None:
            if not citation.law_text:
                return Verdict(citation, False, "no law named")
            known = self._known.get(_key(citation.law_text))
            if known is None:
                return Verdict(citation, False, "unknown law")
            return Verdict(citation, False, "law not in index", title=known.title, replaced_by=known.replaced_by)
        versions = self._rids.get((citation.law, citation.article_no, citation.sub))
        if not versions:
            return Verdict(citation, False, self._missing(citation))
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

    def _missing(self, citation: Citation) -> str:
        """Why an article of a law the index holds is not there: the law has no such article, or the index
        holds only part of the law (its articles are not 1..last), so it cannot tell."""
        numbers = self._numbers[citation.law]
        last = max(numbers)
        complete = len(numbers) == last
        known = self._known.get(_key(citation.law))
        limit = last if complete else max(last, known.last_article) if known and known.last_article else None
        if limit is not None and (citation.article_no > limit or complete):
            return f"no such article ({citation.law} has {canonical_article(limit)} last)"
        return f"article not in index (it holds {len(numbers)} articles of {citation.law})"

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
