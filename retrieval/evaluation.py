"""Retrieval metrics (BEIR conventions, computed by pytrec_eval) over plain dicts.

``qrels: dict[qid, dict[docid, int]]`` and ``run: dict[qid, dict[docid, float]]``.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "METRICS",
    "evaluate_run",
    "per_query_metrics",
    "load_qrels",
    "load_queries",
    "doc_key",
    "aggregate_hits",
    "truncate_run",
]

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]
METRICS = ("nDCG@10", "MRR@10", "Recall@10", "Recall@100")
_CUTOFF_MRR = 10
_TREC_MEASURES = {"ndcg_cut.10", "recall.10", "recall.100"}


def load_qrels(path: Path | str) -> Qrels:
    """Read a BEIR qrels TSV (header ``query-id  corpus-id  score``); rows with score <= 0 are dropped."""
    qrels: Qrels = defaultdict(dict)
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if header is None or len(header) < 3:
            raise ValueError(f"{path}: expected a header 'query-id<TAB>corpus-id<TAB>score'")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 3:
                raise ValueError(f"{path}:{lineno}: expected 3 tab-separated columns")
            score = int(float(row[2]))
            if score > 0:
                qrels[row[0]][row[1]] = score
    return dict(qrels)


def load_queries(path: Path | str) -> dict[str, str]:
    """Read BEIR queries JSONL (``{"id", "text"}`` per line)."""
    queries: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                record = json.loads(line)
                if "id" not in record or "text" not in record:
                    raise ValueError(f'{path}:{lineno}: a query needs "id" and "text"')
                queries[str(record["id"])] = record["text"]
    return queries


def doc_key(template: str, doc_id: str, title: str, metadata: Mapping[str, Any]) -> str:
    """The qrels id of a chunk: ``template`` formatted with its metadata, ``doc_id`` and ``title``."""
    fields: defaultdict[str, Any] = defaultdict(str, {**metadata, "doc_id": doc_id, "title": title})
    return template.format_map(fields).strip()


def aggregate_hits(hits: Iterable[tuple[str, float]], limit: int) -> dict[str, float]:
    """Chunk hits (doc key, score) to documents: max score per document, best ``limit`` kept."""
    best: dict[str, float] = {}
    for key, score in hits:
        if key and (key not in best or score > best[key]):
            best[key] = score
    return dict(sorted(best.items(), key=lambda kv: kv[1], reverse=True)[:limit])


def truncate_run(run: Run, k: int) -> Run:
    """Keep each query's top-``k`` documents."""
    return {q: dict(sorted(d.items(), key=lambda kv: kv[1], reverse=True)[:k]) for q, d in run.items()}


def per_query_metrics(qrels: Qrels, run: Run) -> dict[str, dict[str, float]]:
    """The four metrics for every query in ``qrels`` (a query missing from ``run`` scores 0)."""
    import pytrec_eval

    full = {q: run.get(q, {}) or {"__none__": 0.0} for q in qrels}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, _TREC_MEASURES)
    mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
    scores = evaluator.evaluate(full)
    rr = mrr.evaluate(truncate_run(full, _CUTOFF_MRR))
    return {
        q: {
            "nDCG@10": scores[q]["ndcg_cut_10"],
            "MRR@10": rr[q]["recip_rank"],
            "Recall@10": scores[q]["recall_10"],
            "Recall@100": scores[q]["recall_100"],
        }
        for q in qrels
    }


def evaluate_run(qrels: Qrels, run: Run) -> dict[str, float]:
    """Mean nDCG@10, MRR@10, Recall@10 and Recall@100 over the queries in ``qrels``."""
    per_query = per_query_metrics(qrels, run)
    n = max(1, len(per_query))
    return {m: round(sum(v[m] for v in per_query.values()) / n, 4) for m in METRICS}
