"""Real documents in: statute books as Markdown, as official-style text PDFs and as scanned PDFs, ingested and
compared article by article with the Markdown originals.

Renders the chosen books of ``../shared/corpora/lawref`` as text PDFs (A4, running header, ``— N —`` page
numbers, justified paragraphs that break across pages, an embedded CJK font) and as image-only copies
(150 dpi greyscale), ingests each format with the real pipeline (a tiny random Qwen3 model: chunk sizes in
Qwen3 tokens; BM25 needs no real model) and reports per format: articles found with the right law and
article, chunks holding page furniture, chunks with a line break between two CJK characters, each article's
whitespace-insensitive similarity to the Markdown article, BM25 nDCG@10 on the STARD questions that cite
only those books, and pages per second. JSON on stdout (and ``--out``); a Markdown table on stderr.

    apt-get install -y fonts-wqy-microhei   # any CJK TrueType font; --install-font does it
    python benchmarks/documents_eval.py --shared ../shared --out docs/documents_eval.json
    python benchmarks/documents_eval.py --shared ../shared --sample 20 --seed 7 --formats md,pdf
"""

from __future__ import annotations

import argparse
import difflib
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ingest.pipeline import IngestOptions, ingest  # noqa: E402
from retrieval.index import Index  # noqa: E402
from retrieval.text import default_analyzer  # noqa: E402
from retrieval.types import CONTINUED  # noqa: E402
from tests.docgen import RenderStyle, cjk_font, render_statute_pdf, scan_pdf  # noqa: E402

# --styles varied: each book in the next of these layouts (the law's title is the running header).
VARIED = (
    {},
    {"outer_footer": True, "header_on_first": False},
    {"footer": "第 {n} 页 共 {total} 页", "indent": 0},
    {"footer": "{n}/{total}", "font_size": 12.0},
    {"footer": "- {n} -", "font_size": 16.0, "indent": 0},
)
DEFAULT_BOOKS = ("劳动合同法(2012-12-28).md", "商标法(2019-04-23).md", "旅游法(2018-10-26).md")
FORMATS = ("md", "pdf", "scan")
_CJK_BREAK = re.compile(r"[\u3400-\u9fff]\n+[\u3400-\u9fff]")
_PAGE_NUMBER = re.compile(r"—\s*\d+\s*—|第\s*\d+\s*页|\b\d+\s*/\s*\d+\b")


def _find_books(lawref: Path, names: list[str], sample: int, seed: int) -> list[Path]:
    every = sorted(lawref.rglob("*.md"))
    if sample:
        return sorted(random.Random(seed).sample(every, sample))
    by_name = {p.name: p for p in every}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SystemExit(f"not in {lawref}: {', '.join(missing)}")
    return [by_name[n] for n in names]


def _install_font() -> None:
    if cjk_font() is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "fonts-wqy-microhei"], check=False)
    if cjk_font() is None:
        raise SystemExit("no CJK TrueType font: apt-get install fonts-wqy-microhei")


def _law_title(book: Path) -> str:
    first = next((ln for ln in book.read_text(encoding="utf-8").splitlines() if ln.startswith("# ")), "")
    return first[2:].strip() or book.stem


def _render(books: list[Path], work: Path, formats: list[str], varied: bool) -> dict[str, Any]:
    """Write each format's files under work/<format>/; returns pages per format and render seconds."""
    pages: dict[str, int] = {}
    for fmt in {*formats, "pdf"}:  # a scan is made from the text PDF
        (work / fmt).mkdir(parents=True, exist_ok=True)
    total = 0
    for i, book in enumerate(books):
        style = RenderStyle(header=_law_title(book), **(VARIED[i % len(VARIED)] if varied else {}))
        if "md" in formats:
            (work / "md" / book.name).write_bytes(book.read_bytes())
        pdf = work / "pdf" / book.with_suffix(".pdf").name
        if "pdf" in formats or "scan" in formats:
            total += render_statute_pdf(book, pdf, style)
        if "scan" in formats:
            scan_pdf(pdf, work / "scan" / pdf.name, dpi=150)
    for fmt in formats:
        pages[fmt] = total if fmt != "md" else 0
    return pages


def _articles(index_dir: Path) -> tuple[dict[tuple[str, str], str], list[Any]]:
    """(law, article) -> the article's text (its parts joined, continuation labels dropped); all chunks."""
    index = Index(index_dir)
    chunks = list(index.docs.get(range(index.docs.next_rid())).values())
    index.close()
    parts: dict[tuple[str, str], list[tuple[str, int, str]]] = defaultdict(list)
    for c in chunks:
        article = c.metadata.get("article")
        if article:
            text = c.text.split(CONTINUED, 1)[1] if CONTINUED in c.text[:20] else c.text
            parts[(c.metadata.get("law", ""), article)].append((c.doc_id, c.seq, text))
    return {key: "".join(t for _, _, t in sorted(v)) for key, v in parts.items()}, chunks


def _compact(text: str) -> str:
    return "".join(text.split())


def _has_header(chunk: Any, reference: dict[tuple[str, str], str], headers: set[str]) -> bool:
    """A running header inside a chunk: more often than the Markdown article has the title, or on a line alone."""
    key = (chunk.metadata.get("law", ""), chunk.metadata.get("article", ""))
    for header in headers:
        if key in reference and chunk.text.count(header) > reference[key].count(header):
            return True
        if re.search(rf"(^|\n)\s*{re.escape(header)}\s*($|\n)", chunk.text):
            return True
    return False


def _quality(reference: dict[tuple[str, str], str], found: dict, chunks: list, headers: set[str]) -> dict:
    sims = [
        difflib.SequenceMatcher(None, _compact(reference[k]), _compact(found[k]), autojunk=False).ratio()
        if k in found
        else 0.0
        for k in reference
    ]
    furniture = [c for c in chunks if _PAGE_NUMBER.search(c.text) or _has_header(c, reference, headers)]
    breaks = [c for c in chunks if _CJK_BREAK.search(c.text)]
    return {
        "chunks": len(chunks),
        "articles_reference": len(reference),
        "articles_found": sum(1 for k in reference if k in found),
        "articles_extra": sorted(f"{k[0]} {k[1]}" for k in found if k not in reference)[:20],
        "chunks_with_furniture": len(furniture),
        "chunks_with_cjk_line_break": len(breaks),
        "cjk_line_break_share": round(len(breaks) / max(len(chunks), 1), 4),
        "similarity_mean": round(sum(sims) / max(len(sims), 1), 4),
        "similarity_ge_098": round(sum(s >= 0.98 for s in sims) / max(len(sims), 1), 4),
        "similarity_ge_095": round(sum(s >= 0.95 for s in sims) / max(len(sims), 1), 4),
        "worst": sorted(
            ({"article": f"{k[0]} {k[1]}", "similarity": round(s, 3)} for k, s in zip(reference, sims, strict=True)),
            key=lambda r: r["similarity"],
        )[:5],
    }


def _stard_subset(shared: Path, laws: set[str], work: Path) -> tuple[Path, Path, int] | None:
    """STARD questions whose every relevant article is in ``laws``: (qrels, queries, count)."""
    stard = shared / "eval" / "stard_lawref_core"
    rows = [ln.split("\t") for ln in (stard / "qrels_by_article.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    by_query: dict[str, list[list[str]]] = defaultdict(list)
    for row in rows:
        by_query[row[0]].append(row)
    keep = {q for q, rs in by_query.items() if all(r[1].rsplit(" ", 1)[0] in laws for r in rs)}
    if not keep:
        return None
    qrels = work / "qrels.tsv"
    qrels.write_text(
        "query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for q in sorted(keep) for r in by_query[q]),
        encoding="utf-8",
    )
    return qrels, stard / "queries.jsonl", len(keep)


def _bm25_ndcg(index_dir: Path, subset: tuple[Path, Path, int] | None) -> float | None:
    if subset is None:
        return None
    from app.evaluate import EvalConfig, run_eval
    from app.services import build_services
    from app.settings import Settings
    from retrieval.searcher import BM25

    services = build_services(Settings(index=index_dir), load_model=False)
    config = EvalConfig(qrels=subset[0], queries=subset[1], mode=BM25, doc_id="{law} {article}")
    result = run_eval(services, config, progress=False)
    services.index.close()
    return round(result["nDCG@10"], 4)


def _library_speeds(pdfs: list[Path]) -> dict[str, float]:
    """Pages per second of each candidate library's raw text extraction (characters with positions where the
    library gives them) on the rendered PDFs: what chose pypdfium2 for the text layer."""
    import pdfplumber
    import pypdfium2 as pdfium
    from pypdf import PdfReader

    def pdfium_chars(path: Path) -> int:
        pdf = pdfium.PdfDocument(str(path))
        for page in pdf:
            textpage = page.get_textpage()
            for i in range(textpage.count_chars()):
                textpage.get_charbox(i, loose=True)
                pdfium.raw.FPDFText_GetFontSize(textpage, i)
        return len(pdf)

    def plumber_chars(path: Path) -> int:
        with pdfplumber.open(str(path)) as pdf:
            for page in pdf.pages:
                _ = page.chars
            return len(pdf.pages)

    def pypdf_text(path: Path) -> int:
        reader = PdfReader(str(path))
        for page in reader.pages:
            page.extract_text()
        return len(reader.pages)

    speeds = {}
    for name, run in (("pypdfium2", pdfium_chars), ("pdfplumber", plumber_chars), ("pypdf", pypdf_text)):
        start = time.perf_counter()
        pages = sum(run(p) for p in pdfs)
        speeds[name] = round(pages / (time.perf_counter() - start), 1)
    return speeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--books", nargs="+", default=list(DEFAULT_BOOKS), help="File names under corpora/lawref")
    parser.add_argument("--sample", type=int, default=0, help="A random sample of this many books instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument(
        "--styles", choices=["official", "varied"], default="official",
        help="official: centred '— N —' footers, indented paragraphs; varied: books rotate through five layouts",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="Ingest worker processes (OCR runs in them)")
    parser.add_argument("--model", help="Embedding model directory (default: a tiny random Qwen3 built here)")
    parser.add_argument("--work", type=Path, help="Keep rendered files and indexes here (default: a temp dir)")
    parser.add_argument("--install-font", action="store_true", help="apt-get install a CJK font if none is found")
    parser.add_argument("--out", type=Path, help="Also write the JSON here")
    parser.add_argument("--libraries", action="store_true", help="Also time pypdfium2, pdfplumber and pypdf")
    args = parser.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    if args.install_font:
        _install_font()
    books = _find_books(args.shared / "corpora" / "lawref", args.books, args.sample, args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="zhrag-docs-"))
    from app.tiny_model import build_tiny_qwen3_embedding
    from retrieval.embedders.sentence_transformers import SentenceTransformerEmbedder

    model = args.model or str(
        build_tiny_qwen3_embedding(work / "tiny-model", [b.read_text(encoding="utf-8") for b in books])
    )
    embedder = SentenceTransformerEmbedder(model, device="cpu")
    analyzer = default_analyzer()
    started = time.perf_counter()
    pages = _render(books, work, formats, args.styles == "varied")
    render_seconds = round(time.perf_counter() - started, 1)
    results: dict[str, Any] = {}
    for fmt in formats:
        shutil.rmtree(work / f"index-{fmt}", ignore_errors=True)  # a reused --work dir: index from scratch
        t0 = time.perf_counter()
        summary = ingest(
            [work / fmt], work / f"index-{fmt}", embedder, analyzer, progress=False,
            options=IngestOptions(workers=args.workers),
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        results[fmt] = {
            "files": summary.files,
            "skipped": summary.skipped,
            "seconds": round(seconds, 1),
            "pages": pages.get(fmt, 0),
            "pages_per_second": round(pages[fmt] / seconds, 2) if pages.get(fmt) else None,
            "ocr_pages": summary.ocr_pages,
            "ocr_confidence": summary.ocr_confidence,
        }
    reference, _ = _articles(work / "index-md") if "md" in formats else ({}, [])
    laws = {k[0] for k in reference}
    subset = _stard_subset(args.shared, laws, work) if laws else None
    headers = laws
    for fmt in formats:
        found, chunks = _articles(work / f"index-{fmt}")
        results[fmt].update(_quality(reference or found, found, chunks, headers))
        results[fmt]["bm25_ndcg10"] = _bm25_ndcg(work / f"index-{fmt}", subset)
    speeds = _library_speeds(sorted((work / "pdf").glob("*.pdf"))) if args.libraries else None
    report = {
        "library_pages_per_second": speeds,
        "books": [b.name for b in books],
        "styles": args.styles,
        "stard_questions": subset[2] if subset else 0,
        "render_seconds": render_seconds,
        "model": "tiny random Qwen3 (chunking in Qwen3 tokens; BM25 only)" if not args.model else args.model,
        "formats": results,
    }
    text = json.dumps(report, ensure_ascii=False, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    _table(report)
    return 0


def _table(report: dict[str, Any]) -> None:
    cols = [
        ("chunks", "chunks"), ("articles_found", "articles found"), ("chunks_with_furniture", "furniture"),
        ("chunks_with_cjk_line_break", "CJK line breaks"), ("similarity_ge_098", "sim >= 0.98"),
        ("similarity_mean", "mean sim"), ("bm25_ndcg10", "BM25 nDCG@10"), ("pages_per_second", "pages/s"),
    ]  # fmt: skip
    print("| format | " + " | ".join(c[1] for c in cols) + " |", file=sys.stderr)
    print("|---" * (len(cols) + 1) + "|", file=sys.stderr)
    for fmt, row in report["formats"].items():
        print(f"| {fmt} | " + " | ".join(str(row.get(c[0])) for c in cols) + " |", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
