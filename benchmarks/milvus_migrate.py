"""Move a copy of an index to Milvus Lite and compare 20 questions' top-10 lists before and after.

    python benchmarks/milvus_migrate.py --index IDX --queries Q.jsonl [--kind auto|flat|hnsw] [--n 20]

The index is copied to a temporary directory first (the original is untouched). Prints one JSON object:
the migration's seconds, how many of the questions got identical top-10 lists per mode, and the mean
milliseconds per query of each leg before (FAISS + local BM25) and after (both legs in Milvus Lite).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.services import build_services  # noqa: E402
from app.settings import Settings  # noqa: E402
from retrieval.index import migrate_store  # noqa: E402
from retrieval.searcher import BM25, DENSE, HYBRID, SearchOptions  # noqa: E402

MODES = (BM25, DENSE, HYBRID)


def _results(index: Path, queries: list[str]) -> tuple[dict[str, list[list[str]]], dict[str, float]]:
    services = build_services(Settings(index=index, microbatch=False))
    try:
        found = {
            mode: [
                [h.chunk.id for h in services.searcher.search(q, SearchOptions(top_k=10, mode=mode)).hits]
                for q in queries
            ]
            for mode in MODES
        }
        ms = {}
        for mode in (BM25, DENSE):
            start = time.perf_counter()
            for q in queries:
                services.searcher.search(q, SearchOptions(top_k=10, mode=mode))
            ms[mode] = round((time.perf_counter() - start) / len(queries) * 1000, 2)
        return found, ms
    finally:
        services.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True, help="JSONL with a text field per line")
    parser.add_argument("--kind", choices=["auto", "flat", "hnsw"], default="auto")
    parser.add_argument("--n", type=int, default=20)
    args = parser.parse_args()
    queries = [json.loads(line)["text"] for line in args.queries.open(encoding="utf-8")][: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "index"
        shutil.copytree(args.index, index)
        before, ms_before = _results(index, queries)
        start = time.perf_counter()
        migrate_store(
            index, {"backend": "milvus", "uri": str(Path(tmp) / "m.db"), "collection": "migrated", "kind": args.kind}
        )
        seconds = time.perf_counter() - start
        after, ms_after = _results(index, queries)
    same = {mode: sum(a == b for a, b in zip(before[mode], after[mode], strict=True)) for mode in MODES}
    print(
        json.dumps(
            {
                "kind": args.kind,
                "queries": len(queries),
                "migrate_seconds": round(seconds, 1),
                "identical_top10": same,
                "ms_per_query_before": ms_before,
                "ms_per_query_milvus": ms_after,
            }
        )
    )


if __name__ == "__main__":
    main()
