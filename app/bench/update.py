"""What one small change to an index costs, by index size: ``zhrag bench --update N``.

Builds an index of about ``N`` chunks from synthetic statute-like documents with the zero-cost embedder (the
real tokenizer, no model time), then times adding, replacing and deleting one two-article document, and
counts the bytes this process wrote for each (``wchar`` of ``/proc/self/io``: every ``write`` call, the SQLite
backup, the vector store, BM25, the manifest). Search latency (BM25 and dense, one query at a time) is
measured before and after the writes. A change that costs what it changes would take the same time and write
the same bytes at every ``N``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from app.bench.ingest import ZeroCostEmbedder
from ingest.chunkers import ChunkSettings
from ingest.pipeline import IngestOptions, ingest, remove_documents
from retrieval.index import Index
from retrieval.protocols import Embedder
from retrieval.searcher import BM25, DENSE, Searcher, SearchOptions
from retrieval.text import Analyzer

__all__ = ["run_update_bench", "synthetic_documents"]

_SUBJECTS = ["医疗机构", "执业医师", "药品经营企业", "用人单位", "出租人", "承运人", "行政机关", "监护人"]
_DUTIES = ["应当建立健全内部管理制度", "不得泄露患者隐私", "应当依法履行告知义务", "应当妥善保管相关资料"]
_OUTCOMES = ["由县级以上人民政府责令改正", "处五千元以上五万元以下罚款", "依法承担赔偿责任", "吊销其执业证书"]
ARTICLES_PER_DOCUMENT = 10
QUESTIONS = ["医疗机构泄露患者隐私的责任", "用人单位未履行告知义务", "药品经营企业的管理制度", "监护人的赔偿责任"]


def _article(doc: int, n: int) -> str:
    s, d, o = _SUBJECTS[(doc + n) % 8], _DUTIES[(doc * 3 + n) % 4], _OUTCOMES[(doc + 2 * n) % 4]
    return f"第{n + 1}条 {s}{d}；违反本条规定的，{o}。（第{doc}号规定）"


def synthetic_documents(count: int, start: int = 0) -> list[dict[str, Any]]:
    """``count`` statute-like documents of ``ARTICLES_PER_DOCUMENT`` short articles each (one chunk apiece
    under the statute chunker)."""
    return [
        {
            "id": f"规定{doc:07d}",
            "title": f"第{doc}号管理规定",
            "text": f"# 第{doc}号管理规定\n\n" + "\n\n".join(_article(doc, n) for n in range(ARTICLES_PER_DOCUMENT)),
        }
        for doc in range(start, start + count)
    ]


def _write_jsonl(path: Path, docs: list[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for doc in docs:
            out.write(json.dumps(doc, ensure_ascii=False) + "\n")
    return path


def _written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def _measured(run: Any) -> dict[str, float]:
    before, start = _written_bytes(), time.perf_counter()
    run()
    return {"seconds": round(time.perf_counter() - start, 3), "mb_written": round((_written_bytes() - before) / 1e6, 2)}


def _search_ms(index_dir: Path, embedder: Embedder, analyzer: Analyzer, repeat: int = 20) -> dict[str, float]:
    index = Index(index_dir)
    try:
        searcher = Searcher(index, embedder, analyzer)
        times: dict[str, float] = {}
        for mode in (BM25, DENSE):
            runs = []
            for i in range(repeat):
                start = time.perf_counter()
                searcher.search(QUESTIONS[i % len(QUESTIONS)], SearchOptions(top_k=10, mode=mode))
                runs.append(time.perf_counter() - start)
            times[f"{mode}_p50_ms"] = round(1000 * statistics.median(runs), 2)
        return times
    finally:
        index.close()


def run_update_bench(chunks: int, embedder: Embedder, analyzer: Analyzer, workers: int = 1) -> dict[str, Any]:
    """Build an index of about ``chunks`` chunks, then time a one-document add, replace and delete.

    Args:
        chunks: Index size (rounded to whole documents of ``ARTICLES_PER_DOCUMENT`` chunks).
        embedder: The real embedder (its tokenizer; vectors come from the zero-cost embedder).
        analyzer: BM25 analyzer.
        workers: Ingest workers for the build.
    """
    zero = ZeroCostEmbedder(embedder)
    documents = max(1, chunks // ARTICLES_PER_DOCUMENT)
    result: dict[str, Any] = {"documents": documents, "model": embedder.name}
    with tempfile.TemporaryDirectory(prefix="zhrag-update-") as tmp:
        work, index = Path(tmp), Path(tmp) / "index"
        corpus = _write_jsonl(work / "corpus.jsonl", synthetic_documents(documents))
        built = ingest([corpus], index, zero, analyzer, ChunkSettings(), progress=False, options=IngestOptions(workers))
        result.update(chunks=built.chunks, build_seconds=built.seconds, search_before=_search_ms(index, zero, analyzer))
        one = _write_jsonl(work / "one.jsonl", synthetic_documents(1, start=documents))
        changed = synthetic_documents(1, start=documents)
        changed[0]["text"] += "\n\n第十一条 本规定自公布之日起施行。"
        again = _write_jsonl(work / "again.jsonl", changed)
        single = IngestOptions(workers=1)
        result["add"] = _measured(lambda: ingest([one], index, zero, analyzer, progress=False, options=single))
        result["replace"] = _measured(lambda: ingest([again], index, zero, analyzer, progress=False, options=single))
        result["delete"] = _measured(lambda: remove_documents(index, [changed[0]["id"]]))
        result["search_after"] = _search_ms(index, zero, analyzer)
        result["index_mb"] = round(sum(p.stat().st_size for p in index.rglob("*") if p.is_file()) / 1e6, 1)
    return result
