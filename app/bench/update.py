"""What one small change to an index costs, by index size: ``zhrag bench --update N``.

Builds an index of about ``N`` chunks from synthetic statute-like documents with the zero-cost embedder (the
real tokenizer, no model time), then times adding, replacing and deleting one document of ten articles, and
counts the bytes this process wrote for each (``wchar`` of ``/proc/self/io``: every ``write`` call: the new
segment, deletions files, the manifest). Then ``writes`` more one-document additions, each followed by the
merges the tiered policy asks for (as a server runs them between writes), and search latency (BM25, dense
and hybrid, one query at a time) after them against the same documents merged into one segment. A change
that costs what it changes takes the same time and writes the same bytes at every ``N``.
"""

from __future__ import annotations

import gc
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from app.bench.ingest import ZeroCostEmbedder
from ingest.chunkers import ChunkSettings
from ingest.pipeline import IngestOptions, ingest, remove_documents
from retrieval.index import Index, IndexWriter, merge_segments, read_manifest
from retrieval.protocols import Embedder
from retrieval.searcher import BM25, DENSE, HYBRID, Searcher, SearchOptions
from retrieval.text import Analyzer

__all__ = ["run_update_bench", "synthetic_documents"]

_SUBJECTS = ["医疗机构", "执业医师", "药品经营企业", "用人单位", "出租人", "承运人", "行政机关", "监护人"]
_DUTIES = ["应当建立健全内部管理制度", "不得泄露患者隐私", "应当依法履行告知义务", "应当妥善保管相关资料"]
_OUTCOMES = ["由县级以上人民政府责令改正", "处五千元以上五万元以下罚款", "依法承担赔偿责任", "吊销其执业证书"]
ARTICLES_PER_DOCUMENT = 10
REPEATS = 5
"""Times each one-document change is measured (with another document each time)."""
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


def _measured(run: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
    before, start = _written_bytes(), time.perf_counter()
    run(*args, **kwargs)
    return {"seconds": round(time.perf_counter() - start, 3), "mb_written": round((_written_bytes() - before) / 1e6, 2)}


def _search_ms(index_dir: Path, embedder: Embedder, analyzer: Analyzer, repeat: int = 100) -> dict[str, float]:
    index = Index(index_dir)
    try:
        searcher = Searcher(index, embedder, analyzer)
        times: dict[str, float] = {}
        for mode in (BM25, DENSE, HYBRID):
            runs = []
            for i in range(-10, repeat):  # ten warm-up searches
                if i < 0:
                    searcher.search(QUESTIONS[i % len(QUESTIONS)], SearchOptions(top_k=10, mode=mode))
                    continue
                start = time.perf_counter()
                searcher.search(QUESTIONS[i % len(QUESTIONS)], SearchOptions(top_k=10, mode=mode))
                runs.append(time.perf_counter() - start)
            times[f"{mode}_p50_ms"] = round(1000 * statistics.median(runs), 2)
        return times
    finally:
        index.close()


def _one_document_changes(work: Path, index: Path, zero: Embedder, analyzer: Analyzer, first: int) -> dict[str, Any]:
    """Add, replace and delete one document, ``REPEATS`` times (each with another document): the median time
    and bytes of each step."""
    single = IngestOptions(workers=1)
    runs: dict[str, list[dict[str, float]]] = {"add": [], "replace": [], "delete": []}
    for n in range(first, first + REPEATS):
        one = _write_jsonl(work / "one.jsonl", synthetic_documents(1, start=n))
        changed = synthetic_documents(1, start=n)
        changed[0]["text"] += "\n\n第十一条 本规定自公布之日起施行。"
        again = _write_jsonl(work / "again.jsonl", changed)
        quiet = {"progress": False, "options": single}
        runs["add"].append(_measured(ingest, [one], index, zero, analyzer, **quiet))
        runs["replace"].append(_measured(ingest, [again], index, zero, analyzer, **quiet))
        runs["delete"].append(_measured(remove_documents, index, [changed[0]["id"]]))
    return {step: {k: statistics.median(r[k] for r in done) for k in done[0]} for step, done in runs.items()}


def _small_writes(
    work: Path, index: Path, zero: Embedder, analyzer: Analyzer, first: int, writes: int
) -> dict[str, Any]:
    """``writes`` one-document additions, each followed by the merges the tiered policy asks for."""
    write_s, merge_s, segments, merges = [], [], [], 0
    single = IngestOptions(workers=1)
    for n in range(writes):
        path = _write_jsonl(work / "small.jsonl", synthetic_documents(1, start=first + n))
        start = time.perf_counter()
        ingest([path], index, zero, analyzer, progress=False, options=single)
        write_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        merges += len(merge_segments(index))
        merge_s.append(time.perf_counter() - start)
        segments.append(len(read_manifest(index)["segments"]))
    return {
        "writes": writes,
        "write_p50_s": round(statistics.median(write_s), 3),
        "write_max_s": round(max(write_s), 3),
        "merges": merges,
        "merge_total_s": round(sum(merge_s), 2),
        "merge_max_s": round(max(merge_s), 2),
        "segments_max": max(segments),
        "segments_after": segments[-1],
    }


def _into_one_segment(index: Path) -> None:
    manifest = read_manifest(index)
    with IndexWriter(index, manifest["embedder"]) as writer:
        writer.rewrite(manifest["store"])


def run_update_bench(
    chunks: int, embedder: Embedder, analyzer: Analyzer, workers: int = 1, writes: int = 100
) -> dict[str, Any]:
    """Build an index of about ``chunks`` chunks, time a one-document add, replace and delete, then
    ``writes`` small writes (and their merges), and compare search latency with one segment.

    Args:
        chunks: Index size (rounded to whole documents of ``ARTICLES_PER_DOCUMENT`` chunks).
        embedder: The real embedder (its tokenizer; vectors come from the zero-cost embedder).
        analyzer: BM25 analyzer.
        workers: Ingest workers for the build.
        writes: One-document additions before the second latency measurement.
    """
    zero = ZeroCostEmbedder(embedder)
    documents = max(1, chunks // ARTICLES_PER_DOCUMENT)
    result: dict[str, Any] = {"documents": documents, "model": embedder.name}
    with tempfile.TemporaryDirectory(prefix="zhrag-update-") as tmp:
        work, index = Path(tmp), Path(tmp) / "index"
        corpus = _write_jsonl(work / "corpus.jsonl", synthetic_documents(documents))
        built = ingest([corpus], index, zero, analyzer, ChunkSettings(), progress=False, options=IngestOptions(workers))
        result.update(chunks=built.chunks, build_seconds=built.seconds, search_before=_search_ms(index, zero, analyzer))
        result.update(_one_document_changes(work, index, zero, analyzer, documents))
        result["small_writes"] = _small_writes(work, index, zero, analyzer, documents + REPEATS, writes)
        result["index_mb"] = round(sum(p.stat().st_size for p in index.rglob("*") if p.is_file()) / 1e6, 1)
        one = work / "one"
        shutil.copytree(index, one)
        _into_one_segment(one)
        after, single = _alternating(index, one, zero, analyzer)
        result.update(search_after=after, search_one_segment=single)
        result["latency_vs_one_segment"] = {k: round(after[k] / v, 2) for k, v in single.items() if v}
    return result


def _alternating(a: Path, b: Path, embedder: Embedder, analyzer: Analyzer, rounds: int = 3) -> tuple[dict, dict]:
    """Search latency of two indexes measured in turns (the median of each mode's p50 over the rounds), so
    the machine's drift and the collector's state weigh on both alike."""
    runs: tuple[list[dict[str, float]], list[dict[str, float]]] = ([], [])
    for _ in range(rounds):
        for side, path in zip(runs, (a, b), strict=True):
            gc.collect()
            side.append(_search_ms(path, embedder, analyzer))
    return tuple({k: statistics.median(r[k] for r in side) for k in side[0]} for side in runs)  # type: ignore[return-value]
