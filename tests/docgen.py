"""Real documents for tests and benchmarks: statute books rendered as official-style PDFs and as scans.

A text PDF has what a government PDF has: A4 pages, the law's title as a running header, ``— N —`` page
numbers at the foot, justified paragraphs indented by two characters that wrap and break across pages, and
an embedded CJK font. A scanned copy is each page rendered to a greyscale image and nothing else. Needs
reportlab and pypdfium2 (the dev extra) and a CJK TrueType font (Debian: ``fonts-wqy-microhei``).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "cjk_font",
    "RenderStyle",
    "render_statute_pdf",
    "render_paragraphs_pdf",
    "scan_pdf",
    "render_text_image",
    "FONT_CANDIDATES",
    "raw_pdf",
]

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
)
_FONT = "ZhragCJK"
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*$")


def cjk_font() -> str | None:
    """A CJK TrueType font on this machine (reportlab embeds TrueType, not CFF), or ``None``."""
    return next((f for f in FONT_CANDIDATES if Path(f).is_file()), None)


def _register(font: str) -> None:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    if _FONT not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont(_FONT, font, subfontIndex=0) if font.endswith(".ttc") else TTFont(_FONT, font))


@dataclass(frozen=True)
class RenderStyle:
    """How a document is laid out.

    Attributes:
        header: Running header text (``None``: none).
        footer: Page-number format, ``{n}`` the page and ``{total}`` the count (``None``: none).
        outer_footer: Page numbers at the outer edge (odd right, even left), as official documents put them.
        columns: Text columns per page (1 or 2).
        font_size: Body font size in points.
        indent: First-line indent in characters.
        header_on_first: Whether page 1 has the running header too.
    """

    header: str | None = None
    footer: str | None = "— {n} —"
    outer_footer: bool = False
    columns: int = 1
    font_size: float = 14.0
    indent: int = 2
    header_on_first: bool = True


def _styles(size: float, indent: int):
    from reportlab.lib.enums import TA_CENTER, TA_JUSTIFY
    from reportlab.lib.styles import ParagraphStyle

    body = ParagraphStyle(
        "body", fontName=_FONT, fontSize=size, leading=size * 1.7, alignment=TA_JUSTIFY,
        firstLineIndent=indent * size, wordWrap="CJK", spaceAfter=0,
    )  # fmt: skip
    return {
        "title": ParagraphStyle("title", parent=body, fontSize=size * 1.6, leading=size * 2.4, alignment=TA_CENTER,
                                firstLineIndent=0, spaceAfter=size),
        "info": ParagraphStyle("info", parent=body, fontSize=size * 0.85, leading=size * 1.4, alignment=TA_CENTER,
                               firstLineIndent=0),
        "h": ParagraphStyle("h", parent=body, fontSize=size * 1.15, leading=size * 2.2, alignment=TA_CENTER,
                            firstLineIndent=0, spaceBefore=size * 0.5),
        "body": body,
    }  # fmt: skip


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def statute_blocks(markdown: str) -> list[tuple[str, str]]:
    """(style, text) per paragraph of a statute book: the title, its dates, headings, then article paragraphs."""
    blocks: list[tuple[str, str]] = []
    head, _, body = markdown.partition("<!-- INFO END -->") if "<!-- INFO END -->" in markdown else ("", "", markdown)
    for line in head.splitlines():
        line = line.strip()
        if not line:
            continue
        heading = _MD_HEADING.match(line)
        blocks.append(("title", heading.group(2)) if heading and not blocks else ("info", line.lstrip("#").strip()))
    for line in body.splitlines():
        line = line.strip()
        if not line or line.startswith("<!--"):
            continue
        heading = _MD_HEADING.match(line)
        if heading:
            blocks.append(("title" if not blocks else "h", heading.group(2)))
        else:
            blocks.append(("body", line))
    return blocks


def _page_decorator(style: RenderStyle, size: float, total: int) -> Callable:
    from reportlab.lib.pagesizes import A4

    width, height = A4

    def decorate(canvas, doc) -> None:
        canvas.saveState()
        n = doc.page
        if style.header and (n > 1 or style.header_on_first):
            canvas.setFont(_FONT, size * 0.75)
            canvas.drawCentredString(width / 2, height - 50, style.header)
            canvas.setLineWidth(0.5)
            canvas.line(72, height - 56, width - 72, height - 56)
        if style.footer:
            text = style.footer.format(n=n, total=total)
            canvas.setFont(_FONT, size * 0.8)
            if style.outer_footer:
                (canvas.drawRightString(width - 72, 40, text) if n % 2 else canvas.drawString(72, 40, text))
            else:
                canvas.drawCentredString(width / 2, 40, text)
        canvas.restoreState()

    return decorate


def render_paragraphs_pdf(
    blocks: Sequence[tuple[str, str]],
    path: Path,
    style: RenderStyle = RenderStyle(),
    title: str | None = None,
    font: str | None = None,
    tables: dict[int, list[list[str]]] | None = None,
) -> int:
    """Render (style, text) paragraphs to ``path``; ``tables`` puts a ruled table after block i. Returns pages."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.platypus import BaseDocTemplate, Frame, PageTemplate, Paragraph, Table, TableStyle

    font = font or cjk_font()
    if font is None:
        raise RuntimeError("no CJK TrueType font found (Debian: apt-get install fonts-wqy-microhei)")
    _register(font)
    styles = _styles(style.font_size, style.indent)

    def story() -> list:  # flowables are consumed by a build: a fresh story for each pass
        flow = []
        for i, (kind, text) in enumerate(blocks):
            flow.append(Paragraph(_escape(text), styles[kind]))
            if tables and i in tables:
                cells = [[Paragraph(_escape(c), styles["info"]) for c in row] for row in tables[i]]
                table = Table(cells, repeatRows=1)
                table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.6, colors.black)]))
                flow.append(table)
        return flow

    width, height = A4
    margin_x, top, bottom = 72, 80, 70
    gap = 18
    col_w = (width - 2 * margin_x - gap * (style.columns - 1)) / style.columns
    frames = [
        Frame(margin_x + i * (col_w + gap), bottom, col_w, height - top - bottom, id=f"c{i}", leftPadding=0,
              rightPadding=0, topPadding=0, bottomPadding=0)
        for i in range(style.columns)
    ]  # fmt: skip
    total = 0
    for _ in range(2 if style.footer and "{total}" in style.footer else 1):  # first pass counts the pages
        buffer = io.BytesIO()
        doc = BaseDocTemplate(buffer, pagesize=A4, title=title or "", author="zhrag tests")
        doc.addPageTemplates(
            [PageTemplate(id="page", frames=frames, onPage=_page_decorator(style, style.font_size, total))]
        )
        doc.build(story())
        total = doc.page
    path.write_bytes(buffer.getvalue())
    return total


def render_statute_pdf(markdown_path: Path, path: Path, style: RenderStyle | None = None, **kwargs) -> int:
    """A statute book (``# title``, metadata, ``## 第X章``, articles) as an official-style PDF. Returns pages."""
    blocks = statute_blocks(markdown_path.read_text(encoding="utf-8"))
    law = next((text for kind, text in blocks if kind == "title"), markdown_path.stem)
    return render_paragraphs_pdf(blocks, path, style or RenderStyle(header=law), title=law, **kwargs)


def scan_pdf(source: Path, path: Path, dpi: int = 150, pages: Sequence[int] | None = None) -> int:
    """An image-only copy of ``source``: each page (or those in ``pages``, 0-based) rendered to greyscale.

    Pages not listed keep their text layer (a mixed PDF). Returns the number of pages.
    """
    import pypdfium2 as pdfium

    src = pdfium.PdfDocument(str(source))
    out = pdfium.PdfDocument.new()
    chosen = set(range(len(src)) if pages is None else pages)
    for i in range(len(src)):
        if i not in chosen:
            out.import_pages(src, [i])
            continue
        page = src[i]
        width, height = page.get_size()
        image = page.render(scale=dpi / 72, grayscale=True).to_pil().convert("L")
        pdf_image = pdfium.PdfImage.new(out)
        pdf_image.set_bitmap(pdfium.PdfBitmap.from_pil(image))
        pdf_image.set_matrix(pdfium.PdfMatrix().scale(width, height))
        new = out.new_page(width, height)
        new.insert_obj(pdf_image)
        new.gen_content()
    out.save(str(path))
    return len(src)


def render_text_image(lines: Sequence[str], path: Path, font: str | None = None, size: int = 28) -> None:
    """A photographed-page stand-in: ``lines`` drawn black on white in a PNG/JPEG/TIFF (by suffix)."""
    from PIL import Image, ImageDraw, ImageFont

    font = font or cjk_font()
    if font is None:
        raise RuntimeError("no CJK TrueType font found (Debian: apt-get install fonts-wqy-microhei)")
    face = ImageFont.truetype(font, size)
    width = max(int(face.getlength(line)) for line in lines) + 2 * size if lines else 200
    image = Image.new("L", (max(width, 200), int(size * 1.8) * len(lines) + 2 * size), 255)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((size, size + i * int(size * 1.8)), line, font=face, fill=0)
    image.save(path)


def raw_pdf(objects: Sequence[bytes]) -> bytes:
    """A PDF file from its objects (numbered from 1, the first the catalog), with a correct xref table."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)
