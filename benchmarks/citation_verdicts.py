"""Citation verdicts on LLM-style answer texts: is each 《law》第N条 judged right, and is any certified falsely?

    python benchmarks/citation_verdicts.py [--index IDX] [--sets data/eval/citation_answers/*.jsonl]

Each case is an answer text with its citations in order, each with the expected verdict: ``found``, ``no such
article``, ``article not in index``, ``law not in index`` (a real law the index does not hold), ``unknown law``
(an invented one) or ``no law named``. The expectations are written for an index of the bundled sample
(``data/statutes``); without ``--index`` the sample's articles are read from its files directly. Prints one
JSON object per set and a total.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ingest.chunkers.statute import law_version, parse_articles  # noqa: E402
from ingest.loaders import load_file  # noqa: E402
from retrieval.citations import CitationIndex  # noqa: E402
from retrieval.metrics import judge_verdicts, verdict_label  # noqa: E402

SETS = sorted((ROOT / "data" / "eval" / "citation_answers").glob("*.jsonl"))


def sample_citations(folder: Path) -> CitationIndex:
    """The citation index of the statute books under ``folder``, read straight from the files."""
    rows, rid = [], 0
    for path in sorted(folder.rglob("*.md")):
        for doc in load_file(path, str(path.relative_to(folder))):
            law, _, articles = parse_articles(doc.text, doc.title)
            for article in articles:
                rows.append((law, article.label, article.number, rid, law_version(doc), doc.source))
                rid += 1
    return CitationIndex(rows)


def run_set(citations: CitationIndex, path: Path) -> dict:
    cases = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    got = {}
    for case in cases:
        verdicts = citations.check(case["text"])
        got[case["id"]] = [
            (v.citation.law_text, v.citation.article, verdict_label(v.found, v.reason)) for v in verdicts
        ]
    return {"set": path.name, "texts": len(cases), **judge_verdicts(cases, got)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, help="A zhrag index of data/statutes (default: read the files)")
    parser.add_argument("--sets", type=Path, nargs="+", default=SETS)
    args = parser.parse_args()
    start = time.perf_counter()
    if args.index:
        from retrieval.index import Index

        citations = CitationIndex.from_docstore(Index(args.index).docs)
    else:
        citations = sample_citations(ROOT / "data" / "statutes")
    results = [run_set(citations, path) for path in args.sets]
    total = {k: sum(r[k] for r in results) for k in ("texts", "citations", "right", "certified_falsely")}
    total["accuracy"] = round(total["right"] / total["citations"], 4)
    total["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps({"sets": results, "total": total}, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
