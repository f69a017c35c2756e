"""Statute-aware chunking: one chunk per article (第X条, 第X条之一), with law title and 编/章/节 context.

Long articles are split at paragraph boundaries (then sentences); every part keeps the article number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ingest.chunkers.base import ChunkSettings, LengthFn, cn_to_int, embed_text, make_chunk, text_splitter
from ingest.document import Document
from retrieval.types import CONTINUED, Chunk

__all__ = [
    "chunk_statute",
    "is_statute",
    "law_version",
    "ARTICLE_RE",
    "CONTINUED",
    "INFO_END",
    "parse_articles",
    "Article",
]

_NUM = "零〇一二三四五六七八九十百千万两"
ARTICLE_RE = re.compile(rf"^(第([{_NUM}\d]+)条(?:之([{_NUM}]+))?)(?:\s+|(?=[^\s]))")
# 第二章 总则; OCR drops the space (第二章总则), so a short line without a sentence end counts too.
_STRUCT_HEADING = re.compile(rf"^第[{_NUM}\d]+(编|分编|章|节)(?:\s|$|(?=[^\s，。；：、的之][^，。；：]{{0,24}}$))")
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*$")
_STRUCT_LEVEL = {"编": 1, "分编": 2, "章": 3, "节": 4}
INFO_END = "<!-- INFO END -->"
# A dated line of the law's history (passed, amended, promulgated, in force): metadata, like the INFO block.
_HISTORY_LINE = re.compile(r"^[（(]?\d{4}年\d{1,2}月\d{1,2}日.{0,150}(?:通过|修正|修订|公布|施行|发布)[）)]?[。；]?$")
_COMMENT = re.compile(r"^<!--.*-->$")
# Headings that introduce text of their own rather than enclosing the chapters after them.
SECTION_ONLY_HEADINGS = frozenset({"序言", "目录", "前言"})
MIN_STATUTE_ARTICLES = 3


@dataclass
class Article:
    """One article: its label (第十条之一), number, heading path and paragraphs."""

    label: str
    number: int
    headings: list[str]
    paragraphs: list[str] = field(default_factory=list)


def is_statute(text: str) -> bool:
    """Whether ``text`` looks like a statute: three paragraphs opening with 第X条, or one after a
    statute-book metadata block (``<!-- INFO END -->``)."""
    needed = 1 if INFO_END in text else MIN_STATUTE_ARTICLES
    count = 0
    for line in text.splitlines():
        if ARTICLE_RE.match(line.strip()):
            count += 1
            if count >= needed:
                return True
    return False


def _heading_level(md: re.Match[str] | None, text: str) -> int:
    """第X编/章/节 headings get their structural level (a PDF's headings are ranked by type size, where a
    章 and a 节 can look alike); other Markdown headings keep their ``#`` level."""
    struct = _STRUCT_HEADING.match(text)
    if struct:
        return _STRUCT_LEVEL[struct.group(1)]
    return len(md.group(1)) if md else len(_STRUCT_LEVEL)


def parse_articles(text: str, title: str) -> tuple[str, list[str], list[Article]]:
    """Split a statute into (law title, preamble paragraphs, articles).

    The first ``#`` heading is the law title; later headings (``#`` 编, ``##`` 章, ``###`` 节, or plain
    ``第X章`` lines) form each article's heading path. Text above ``<!-- INFO END -->`` is metadata, and so
    are the dated 通过/修正/公布/施行 lines that open a statute without that marker (a PDF of a law).
    """
    if INFO_END in text:
        head, body = text.split(INFO_END, 1)
        law = next((m.group(2) for ln in head.splitlines() if (m := _MD_HEADING.match(ln.strip()))), title)
        extra = [
            (len(m.group(1)), m.group(2))
            for ln in head.splitlines()
            if (m := _MD_HEADING.match(ln.strip())) and m.group(2) != law
        ]
    else:
        body, law, extra = text, title, []
    path: list[tuple[int, str]] = [(1, h) for _, h in extra]
    preamble: list[str] = []
    articles: list[Article] = []
    law_seen = INFO_END in text
    for raw in body.split("\n"):
        line = raw.strip()
        if not line or _COMMENT.match(line):
            continue
        md = _MD_HEADING.match(line)
        struct = _STRUCT_HEADING.match(line) if not md else None
        if md or (struct and len(line) <= 40):
            heading = md.group(2) if md else line
            if md and not law_seen and len(md.group(1)) == 1:
                law, law_seen = heading, True
                continue
            level = _heading_level(md, heading)
            path = [(lv, h) for lv, h in path if lv < level and h not in SECTION_ONLY_HEADINGS]
            path.append((level, heading))
            continue
        art = ARTICLE_RE.match(line)
        if art:
            number = cn_to_int(art.group(2))
            articles.append(Article(art.group(1), number, [h for _, h in path], [line]))
        elif articles:
            articles[-1].paragraphs.append(line)
        elif preamble or not _HISTORY_LINE.match(line):
            preamble.append(line)
    return law or title, preamble, articles


def _split_article(article: Article, context: str, size: int, length: LengthFn) -> list[str]:
    """Pack paragraphs into parts of at most ``size`` tokens; an over-long paragraph is sentence-split.

    An article that fits is measured with its context, exactly as it is embedded.
    """
    whole = "\n".join(article.paragraphs)
    if length(embed_text(context, whole)) <= size:
        return [whole]
    prefix = f"{article.label}{CONTINUED}"
    budget = size - length(prefix)
    splitter = text_splitter(budget, 0, length)
    pieces: list[str] = []
    for para in article.paragraphs:
        pieces.extend(splitter.split_text(para) if length(para) > budget else [para])
    parts: list[list[str]] = [[]]
    for piece in pieces:
        if parts[-1] and length("\n".join([*parts[-1], piece])) > budget:
            parts.append([])
        parts[-1].append(piece)
    texts = ["\n".join(p) for p in parts if p]
    return [texts[0]] + [f"{prefix}{t}" for t in texts[1:]]


_FILE_DATE = re.compile(r"[(（](\d{4})-(\d{2})-(\d{2})[)）]")
_DATED_LINE = re.compile(r"(\d{4})年(\d{1,2})月(\d{1,2})日.*?(?:通过|修正|修订|公布|施行)")


def law_version(doc: Document) -> str | None:
    """The law's version date (``YYYY-MM-DD``): the file name's ``(2018-10-26)``, else the latest date of
    the text's 通过/修正/修订/公布/施行 lines above its first article."""
    named = _FILE_DATE.search(Path(doc.source).name if doc.source else "")
    if named:
        return "-".join(named.groups())
    head = doc.text.split(INFO_END, 1)[0] if INFO_END in doc.text else doc.text[:4000]
    head = head.split("第一条", 1)[0]
    dates = [f"{y}-{int(m):02d}-{int(d):02d}" for y, m, d in _DATED_LINE.findall(head)]
    return max(dates) if dates else None


def chunk_statute(doc: Document, settings: ChunkSettings, length: LengthFn) -> list[Chunk]:
    """Chunk a statute document one article at a time.

    Each chunk carries metadata ``law``, ``article`` (e.g. 第五十六条), ``article_no``, ``headings``
    (编/章/节 path), ``version`` (the law's date, when known) and ``source``; its embedded text is prefixed
    with the law title and headings.
    """
    law, preamble, articles = parse_articles(doc.text, doc.title)
    chunks: list[Chunk] = []
    version = law_version(doc)
    base = {**doc.metadata, "law": law, "source": doc.source, **({"version": version} if version else {})}
    if preamble:
        text = "\n".join(preamble)
        parts = (
            [text]
            if length(embed_text(law, text)) <= settings.chunk_size
            else text_splitter(settings.chunk_size, settings.chunk_overlap, length).split_text(text)
        )
        for part in parts:
            meta = {**base, "article": "", "headings": []}
            chunks.append(make_chunk(doc.id, len(chunks), part, law, law, doc.source, meta))
    for article in articles:
        context = " ".join([law, *article.headings])
        parts = _split_article(article, context, settings.chunk_size, length)
        for i, part in enumerate(parts):
            meta = {
                **base,
                "article": article.label,
                "article_no": article.number,
                "headings": article.headings,
                "part": i + 1,
                "parts": len(parts),
            }
            chunks.append(make_chunk(doc.id, len(chunks), part, context, law, doc.source, meta))
    return chunks
