"""Page layout to clean text: lines from positioned spans, page furniture removed, paragraphs rebuilt.

Pure functions over plain data, shared by the PDF text layer (a span per character) and OCR (a span per
text box). Coordinates are PDF points with ``top`` growing downwards; ``em`` is a line's character size.

The pipeline for a paged document: :func:`build_lines` per page, then :func:`layout`: :func:`remove_furniture`
over all pages (running headers and footers found by repetition, page numbers by their forms) ->
:func:`order_columns` per page -> :func:`assemble` (wrapped lines joined back into paragraphs, across pages
too; larger type becomes Markdown headings; tables kept as blocks).
"""

from __future__ import annotations

import difflib
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from retrieval.text.normalize import normalize_text

__all__ = [
    "Span",
    "Line",
    "Page",
    "PageSpan",
    "Assembled",
    "build_lines",
    "steady_ems",
    "remove_furniture",
    "order_columns",
    "assemble",
    "layout",
    "is_page_number",
    "compact_len",
    "markdown_table",
]

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_ASCII_WORD = re.compile(r"[A-Za-z0-9]")
_WRAPPED_CJK = re.compile(r"(?<=[\u3400-\u9fff，。、；：（）])[ \t]*\n\s*(?=[\u3400-\u9fff，。、；：（）])")
_NUM = "零〇一二三四五六七八九十百千万两"
# Where a paragraph (or a heading) can start: 第X条/章/节/编, (一), 一、, 1., ①, 附件.
_STRUCTURAL = re.compile(
    rf"^(?:第[{_NUM}\d]+(?:条|章|节|编|分编)|[（(][{_NUM}\d]+[)）]|[{_NUM}]+、|\d+[.、．](?!\d)|[①-⑳]|附件|附录|附表)"
)
_PARA_END = tuple('。！？!?：:；;…」』”"）)')
_NO_LINE_START = tuple("，。、；：？！）」』”’》〉,.;:?!)]%")
_DASHES = "-—–－~〜·•_一"
_PAGE_NUMBER = [
    re.compile(rf"^[{_DASHES}\s]*\d{{1,4}}[{_DASHES}\s]*$"),
    re.compile(rf"^[{_DASHES}\s]*[{_NUM}]{{1,6}}[{_DASHES}\s]+$|^[{_DASHES}\s]+[{_NUM}]{{1,6}}[{_DASHES}\s]*$"),
    re.compile(r"^第\s*[\d{_NUM}]+\s*页\s*[,，/、]?\s*(?:共\s*\d+\s*页)?$".replace("{_NUM}", _NUM)),
    re.compile(r"^共\s*\d+\s*页\s*[,，/、]?\s*第\s*\d+\s*页$"),
    re.compile(r"^\d{1,4}\s*/\s*\d{1,4}$"),
    re.compile(r"^(?:page|p\.)\s*\d+(?:\s*(?:of|/)\s*\d+)?$", re.IGNORECASE),
]
FURNITURE_ZONE = 0.15
"""Share of the page height at the top and at the bottom where headers, footers and page numbers live."""
HEADING_RATIO = 1.1
"""A paragraph in type this much larger than the body text is a heading."""
SIZE_CHANGE = 0.08
"""Type sizes of two lines that differ by more than this share start a new paragraph (OCR sizes are evened
out first, see :func:`steady_ems`)."""


@dataclass(frozen=True)
class Span:
    """Positioned text: one character of a PDF's text layer or one box of OCR output."""

    text: str
    x0: float
    x1: float
    top: float
    bottom: float
    em: float


@dataclass
class Line:
    """One visual line (or a table block, ``table`` set, kept as it is)."""

    text: str
    x0: float
    x1: float
    top: float
    bottom: float
    em: float
    page: int = 0
    column: tuple[float, float] = (0.0, 0.0)
    table: bool = False


@dataclass
class Page:
    """One page's lines (page numbers are 1-based) and how its text was read."""

    number: int
    width: float
    height: float
    lines: list[Line] = field(default_factory=list)
    ocr: bool = False
    confidence: float | None = None


@dataclass(frozen=True)
class PageSpan:
    """Where a page starts in a document's text, in non-whitespace characters (see :func:`compact_len`)."""

    page: int
    start: int
    ocr: bool = False
    confidence: float | None = None


@dataclass
class Assembled:
    """A paged document's text and where each page starts in it."""

    text: str
    pages: list[PageSpan]

    def title(self, fallback: str = "") -> str:
        """The first ``#`` heading, else ``fallback``, else the first line (at most 100 characters)."""
        heading = next((ln[2:].strip() for ln in self.text.split("\n") if ln.startswith("# ")), "")
        first = next((ln.strip().lstrip("#").strip() for ln in self.text.splitlines() if ln.strip()), "")
        return heading or fallback or first[:100]


def compact_len(text: str) -> int:
    """Characters that are not whitespace: page offsets count these, so normalisation cannot move them."""
    return sum(1 for ch in text if not ch.isspace())


# -- lines -----------------------------------------------------------------------------------------


def _join_spans(spans: Sequence[Span]) -> str:
    out: list[str] = []
    for prev, span in zip([None, *spans[:-1]], spans, strict=True):
        if prev is not None and out and not out[-1].endswith(" ") and not span.text.startswith(" "):
            gap = span.x0 - prev.x1
            ascii_pair = _ASCII_WORD.match(prev.text[-1:]) and _ASCII_WORD.match(span.text[:1])
            if gap > 0.25 * max(span.em, 1.0) and (ascii_pair or gap > 0.9 * max(span.em, 1.0)):
                out.append(" ")
        out.append(span.text)
    return re.sub(r" {2,}", " ", "".join(out)).strip()


def _line(spans: list[Span]) -> Line | None:
    text = normalize_text(_join_spans(spans))
    if not text:
        return None
    ems = sorted(s.em for s in spans if s.text.strip())
    return Line(
        text=text,
        x0=min(s.x0 for s in spans),
        x1=max(s.x1 for s in spans),
        top=statistics.median(s.top for s in spans),
        bottom=statistics.median(s.bottom for s in spans),
        em=ems[len(ems) // 2] if ems else 1.0,
    )


def build_lines(spans: Iterable[Span], gap_ems: float = 1.0) -> list[Line]:
    """Group spans into visual lines: rows by vertical overlap, split where a horizontal gap is wider than
    ``gap_ems`` characters (a column gutter), each row read left to right."""
    rows: list[list[Span]] = []
    for span in sorted((s for s in spans if s.text), key=lambda s: ((s.top + s.bottom) / 2, s.x0)):
        middle = (span.top + span.bottom) / 2
        if rows:
            row = rows[-1]
            top = statistics.median(s.top for s in row[-8:])
            bottom = statistics.median(s.bottom for s in row[-8:])
            if top - 0.1 * span.em <= middle <= bottom + 0.1 * span.em:
                row.append(span)
                continue
        rows.append([span])
    lines: list[Line] = []
    for row in rows:
        row.sort(key=lambda s: s.x0)
        piece: list[Span] = []
        for span in row:
            if piece and span.x0 - piece[-1].x1 > gap_ems * max(span.em, piece[-1].em):
                if (line := _line(piece)) is not None:
                    lines.append(line)
                piece = []
            piece.append(span)
        if piece and (line := _line(piece)) is not None:
            lines.append(line)
    return lines


def steady_ems(lines: list[Line], spread: float = 1.2, body_band: float = 1.3) -> list[Line]:
    """Even out OCR type sizes into classes: sizes within ``spread`` of each other form one class and get its
    median; a class within ``body_band`` of the body text's (the class with the most characters) joins the
    body. OCR sizes are estimates, so only a clearly larger type (a title) stays apart."""
    if not lines:
        return lines
    # A line of a few characters has no reliable size of its own: it takes its predecessor's.
    lines = [
        replace(ln, em=prev.em) if len(ln.text) <= 3 and prev is not None else ln
        for prev, ln in zip([None, *lines[:-1]], lines, strict=True)
    ]
    classes: list[list[Line]] = []
    for ln in sorted(lines, key=lambda ln: ln.em):
        if classes and ln.em <= spread * classes[-1][0].em:
            classes[-1].append(ln)
        else:
            classes.append([ln])
    body = max(classes, key=lambda group: sum(len(ln.text) for ln in group))
    body_em = statistics.median(ln.em for ln in body)
    size: dict[int, float] = {}
    for group in classes:
        em = statistics.median(ln.em for ln in group)
        em = body_em if body_em / body_band < em < body_em * body_band else em
        size.update((id(ln), em) for ln in group)
    return [replace(ln, em=size[id(ln)]) for ln in lines]


# -- furniture -------------------------------------------------------------------------------------


def is_page_number(text: str) -> bool:
    """Whether a line is a page number: ``— 3 —``, ``- 3 -``, ``第 3 页``, ``第3页 共13页``, ``3/13``, ``Page 3``."""
    text = text.strip()
    return bool(text) and len(text) <= 24 and any(p.match(text) for p in _PAGE_NUMBER)


def _key(text: str) -> str:
    return re.sub(r"\d+", "#", re.sub(r"[\s\W_]+", "", text))


def _edge_lines(page: Page) -> list[Line]:
    """The two top-most and two bottom-most lines of a page, when inside the furniture zones."""
    ordered = sorted(page.lines, key=lambda ln: ln.top)
    zone = FURNITURE_ZONE * page.height
    top = [ln for ln in ordered[:2] if ln.bottom <= zone and not ln.table]
    bottom = [ln for ln in ordered[-2:] if ln.top >= page.height - zone and not ln.table]
    return top + [ln for ln in bottom if ln not in top]


def _title(pages: Sequence[Page]) -> tuple[str, float]:
    """The first page's largest type (the document's title, over one or more lines) as a key, and its size."""
    lines = pages[0].lines if pages else []
    if not lines:
        return "", 0.0
    median = statistics.median(ln.em for ln in lines)
    big = max(ln.em for ln in lines)
    if big < 1.3 * median:
        return "", big
    return _key("".join(ln.text for ln in sorted(lines, key=lambda ln: ln.top) if ln.em >= 0.95 * big)), big


def remove_furniture(pages: Sequence[Page]) -> list[Page]:
    """Drop running headers and footers and page numbers from the top and bottom zones.

    A header or footer is text repeated at the same height on many pages (digits aside, so "第 3 页" and
    "第 4 页" repeat), or the document's title set in smaller type above it (a one-page document has no
    repetition to go by). Returns new pages.
    """
    candidates = {id(ln): (page, ln) for page in pages for ln in _edge_lines(page)}
    seen: dict[tuple[str, int], set[int]] = defaultdict(set)
    for page, line in candidates.values():
        seen[(_key(line.text), round(line.top / page.height * 40))].add(page.number)
    needed = max(2, int(0.4 * len(pages) + 0.5))
    repeated = [key for key, where in seen.items() if len(where) >= needed and key[0]]
    title, title_em = _title(pages)
    drop: set[int] = set()
    for ident, (page, line) in candidates.items():
        key = _key(line.text)
        band = line.top / page.height * 40
        if (
            is_page_number(line.text)
            or (title and len(key) >= 0.6 * len(title) and key in title and line.em < 0.8 * title_em)
            or any(
                abs(band - b) <= 1.5 and (key == k or difflib.SequenceMatcher(None, key, k).ratio() >= 0.85)
                for k, b in repeated
            )
        ):
            drop.add(ident)
    return [replace(page, lines=[ln for ln in page.lines if id(ln) not in drop]) for page in pages]


# -- columns ---------------------------------------------------------------------------------------


def _gutter(lines: Sequence[Line], width: float) -> float | None:
    """The x of an empty vertical band in the middle of the page that splits the lines into two columns."""
    if len(lines) < 6:
        return None
    step = 2.0
    bins = int(width / step) + 1
    cover = [0] * bins
    for ln in lines:
        for b in range(max(0, int(ln.x0 / step)), min(bins, int(ln.x1 / step) + 1)):
            cover[b] += 1
    lo, hi = int(0.3 * width / step), int(0.7 * width / step)
    allowed = max(1, len(lines) // 20)
    best, run_start, best_len = None, None, 0
    for b in range(lo, hi + 1):
        if cover[b] <= allowed:
            run_start = b if run_start is None else run_start
            if b - run_start + 1 > best_len:
                best_len, best = b - run_start + 1, (run_start + b) / 2 * step
        else:
            run_start = None
    if best is None or best_len * step < 6:
        return None
    left = sum(1 for ln in lines if ln.x1 <= best)
    right = sum(1 for ln in lines if ln.x0 >= best)
    return best if left >= 3 and right >= 3 else None


MIN_GEOMETRY_LINES = 6
"""A column with fewer lines of text than this takes the document's edges (a page's last few lines)."""


def _geometry(lines: Sequence[Line], default: tuple[float, float] | None = None) -> tuple[float, float]:
    """A column's left and right edges: where most lines start and end."""
    body = [ln for ln in lines if len(ln.text) >= 8 and not ln.table]
    if default is not None and len(body) < MIN_GEOMETRY_LINES:
        return default
    body = body or [ln for ln in lines if not ln.table] or list(lines)
    xs0 = sorted(ln.x0 for ln in body)
    xs1 = sorted(ln.x1 for ln in body)
    return xs0[len(xs0) // 10], xs1[(len(xs1) * 9) // 10]


def order_columns(page: Page, default: tuple[float, float] | None = None) -> Page:
    """Reading order: top to bottom, a two-column band left column first; each line gets its column's edges
    (``default`` where a page has too few lines to tell them)."""
    lines = sorted(page.lines, key=lambda ln: (ln.top, ln.x0))
    gutter = _gutter([ln for ln in lines if not ln.table], page.width)
    if gutter is None:
        geometry = _geometry(lines, default) if lines else (0.0, page.width)
        return replace(page, lines=[replace(ln, column=geometry, page=page.number) for ln in lines])
    ordered: list[Line] = []
    band: list[Line] = []

    def flush() -> None:
        left = [ln for ln in band if ln.x1 <= gutter]
        right = [ln for ln in band if ln.x1 > gutter]
        for side in (left, right):
            geometry = _geometry(side) if side else (0.0, page.width)
            ordered.extend(replace(ln, column=geometry, page=page.number) for ln in side)
        band.clear()

    for ln in lines:
        if ln.x0 < gutter < ln.x1:  # spans both columns: a title, a wide table
            flush()
            ordered.append(replace(ln, column=(ln.x0, ln.x1), page=page.number))
        else:
            band.append(ln)
    flush()
    return replace(page, lines=ordered)


def layout(pages: Sequence[Page]) -> Assembled:
    """Pages of raw lines to a document's text: furniture removed, OCR type sizes evened out over the whole
    document (:func:`steady_ems`; per page, a paragraph crossing a page break saw two sizes), columns
    ordered, paragraphs rebuilt."""
    pages = remove_furniture(pages)
    scanned = [ln for page in pages if page.ocr for ln in page.lines if not ln.table]
    if scanned:
        steady = {id(old): new for old, new in zip(scanned, steady_ems(scanned), strict=True)}
        pages = [replace(page, lines=[steady.get(id(ln), ln) for ln in page.lines]) for page in pages]
    every = [ln for page in pages for ln in page.lines if not ln.table]
    default = _geometry(every) if every else None
    return assemble([order_columns(page, default) for page in pages])


# -- paragraphs ------------------------------------------------------------------------------------


def _centered(ln: Line) -> bool:
    left, right = ln.column
    gap_l, gap_r = ln.x0 - left, right - ln.x1
    return gap_l > 2 * ln.em and gap_r > 2 * ln.em and abs(gap_l - gap_r) < 2 * ln.em


_MID_SENTENCE = tuple("，、,（(《“‘[")


def _short(ln: Line, nxt: Line) -> bool:
    """Whether ``ln`` ends a paragraph by ending clearly before its column's right edge.

    Not when it ends mid-sentence (a comma, an opening bracket), nor, without a sentence end, when it falls
    short by a few characters only: typesetters push characters to the next line (a CJK line may not start
    with punctuation; a Latin word that does not fit moves whole).
    """
    gap = ln.column[1] - ln.x1
    width = ln.column[1] - ln.column[0]
    if ln.text.endswith(_MID_SENTENCE) or gap <= 1.5 * ln.em:
        return False
    if ln.text.endswith(_PARA_END):
        return True
    if _ASCII_WORD.match(ln.text[-1:]) and _ASCII_WORD.match(nxt.text[:1]):
        word = re.match(r"\S+", nxt.text)
        return gap > (len(word.group(0)) if word else 1) * 0.6 * nxt.em + ln.em
    return gap > 0.25 * width


def _full(ln: Line) -> bool:
    """Whether a line runs to its column's right edge and stops mid-sentence: it wrapped."""
    return ln.column[1] - ln.x1 <= 1.5 * ln.em and not ln.text.endswith(_PARA_END)


_HISTORY_END = re.compile(r"(?:通过|修正|修订|公布|施行|发布)[）)]?$")
_DATE_START = re.compile(r"^[（(]?\d{4}年\d{1,2}月")


def _indented(ln: Line) -> bool:
    """A first line's indent: set in from the left edge, and not a centred line (equal margins both sides)."""
    gap_l, gap_r = ln.x0 - ln.column[0], ln.column[1] - ln.x1
    return gap_l > 0.8 * ln.em and not (gap_r > 0.5 * ln.em and abs(gap_l - gap_r) < ln.em)


def _breaks(prev: Line, ln: Line, line_gap: float, body_em: float) -> bool:
    """Whether ``ln`` starts a new paragraph after ``prev``."""
    if prev.table or ln.table:
        return True
    if abs(prev.em - ln.em) > SIZE_CHANGE * max(prev.em, ln.em):
        return True
    if ln.text.startswith(_NO_LINE_START):
        return False  # a line never starts with closing punctuation: the previous one wrapped early
    if _indented(ln):
        return True  # a first line; a wrapped line starts at the column's edge
    if _STRUCTURAL.match(ln.text) and (prev.text.endswith(_PARA_END) or _HISTORY_END.search(prev.text)):
        return True
    if _HISTORY_END.search(prev.text) and _DATE_START.match(ln.text):
        return True  # one dated line of a law's history after another
    if _full(prev):
        return False  # a full line stopping mid-sentence wrapped (also a centred title over two lines)
    if _centered(prev) and _centered(ln):  # a title set on two centred lines; chapter headings are smaller
        return not (prev.page == ln.page and ln.em >= 1.3 * body_em)
    if _centered(prev) or _centered(ln):
        return True
    if _short(prev, ln):
        return True
    same_flow = prev.page == ln.page and prev.column == ln.column
    return same_flow and ln.top - prev.bottom > line_gap + 0.8 * ln.em


def _glue(a: str, b: str) -> str:
    if _ASCII_WORD.match(a[-1:]) and _ASCII_WORD.match(b[:1]):
        return f"{a} {b}"
    return a + b


def _line_gap(lines: Sequence[Line]) -> float:
    gaps = [
        b.top - a.bottom
        for a, b in zip(lines, lines[1:], strict=False)
        if a.page == b.page and a.column == b.column and b.top > a.bottom - 1
    ]
    return statistics.median(gaps) if gaps else 0.0


def _heading_levels(paragraphs: Sequence[tuple[str, float, bool]], body_em: float) -> dict[float, int]:
    """Markdown heading level per type size larger than the body's (largest = 1, at most 3 levels)."""
    sizes = sorted(
        {round(em, 1) for text, em, table in paragraphs if not table and em >= HEADING_RATIO * body_em},
        reverse=True,
    )
    return {size: min(i + 1, 3) for i, size in enumerate(sizes)}


def _is_heading_text(text: str) -> bool:
    return len(text) <= 60 and not text.endswith(("。", "；", ";", "，", ","))


def assemble(pages: Sequence[Page]) -> Assembled:
    """Join the pages' lines (furniture removed, in reading order) into paragraphs separated by blank lines.

    Wrapped lines are joined (no line break inside a sentence), also across a page break; a paragraph in
    larger type than the body text becomes a ``#`` heading; table blocks pass through unchanged. Page
    offsets are counted line by line, so a paragraph that crosses a page break is credited to both pages.
    """
    lines = [ln for page in pages for ln in page.lines]
    if not lines:
        return Assembled("", [PageSpan(p.number, 0, p.ocr, p.confidence) for p in pages])
    weights: Counter[float] = Counter()
    for ln in lines:
        if not ln.table:
            weights[round(ln.em, 1)] += len(ln.text)
    body_em = weights.most_common(1)[0][0] if weights else 1.0
    line_gap = _line_gap(lines)
    paragraphs: list[list[Line]] = []
    for prev, ln in zip([None, *lines[:-1]], lines, strict=True):
        if prev is None or _breaks(prev, ln, line_gap, body_em):
            paragraphs.append([ln])
        else:
            paragraphs[-1].append(ln)
    texts = []
    for para in paragraphs:
        text = para[0].text
        for ln in para[1:]:
            text = _glue(text, ln.text)
        texts.append((text, para[0].em, para[0].table))
    levels = _heading_levels(texts, body_em)
    out: list[str] = []
    starts: dict[int, int] = {}
    offset = 0
    for para, (text, em, table) in zip(paragraphs, texts, strict=True):
        level = levels.get(round(em, 1)) if not table and _is_heading_text(text) else None
        offset += level or 0
        for ln in para:
            starts.setdefault(ln.page, offset)
            offset += compact_len(ln.text)
        out.append(f"{'#' * level} {text}" if level else text)
    return Assembled("\n\n".join(out), _page_spans(pages, starts, offset))


def _page_spans(pages: Sequence[Page], starts: dict[int, int], end: int) -> list[PageSpan]:
    """Every page's start offset; a page with no paragraph of its own starts where the next one does."""
    spans: list[PageSpan] = []
    following = end
    for page in reversed(pages):
        following = starts.get(page.number, following)
        spans.append(PageSpan(page.number, following, page.ocr, page.confidence))
    return spans[::-1]


def markdown_table(rows: Sequence[Sequence[str | None]]) -> str:
    """Rows (the first is the header) as a Markdown table; cell line breaks become spaces, ``|`` is escaped."""
    width = max((len(r) for r in rows), default=0)
    if not width:
        return ""

    def cell(value: str | None) -> str:
        text = _WRAPPED_CJK.sub("", str(value or ""))  # a cell's text wrapped inside its box
        return re.sub(r"\s+", " ", text).strip().replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in [*row, *[""] * (width - len(row))]) + " |" for row in rows]
    lines.insert(1, "| " + " | ".join(["---"] * width) + " |")
    return "\n".join(lines)
