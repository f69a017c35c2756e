"""Retrieval metrics (BEIR conventions, computed by pytrec_eval) over plain dicts.

``qrels: dict[qid, dict[docid, int]]`` and ``run: dict[qid, dict[docid, float]]``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from retrieval.errors import InputError

__all__ = [
    "METRICS",
    "evaluate_run",
    "per_query_metrics",
    "load_qrels",
    "load_queries",
    "doc_key",
    "aggregate_hits",
    "truncate_run",
    "verdict_label",
    "judge_verdicts",
]

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]
METRICS = ("nDCG@10", "MRR@10", "Recall@10", "Recall@100")
_CUTOFF_MRR = 10
_TREC_MEASURES = {"ndcg_cut.10", "recall.10", "recall.100"}


def _qrels_row(fields: list[str]) -> tuple[str, str, str] | None:
    """(query, document, score) of a BEIR row (3 columns) or a TREC row (``qid 0 docid score``)."""
    if len(fields) == 3:
        return fields[0], fields[1], fields[2]
    if len(fields) == 4:
        return fields[0], fields[2], fields[3]
    return None


def load_qrels(path: Path | str) -> Qrels:
    """Read qrels: BEIR TSV (``query-id  corpus-id  score``, with or without that header) or TREC
    (``qid 0 docid score``, tab- or space-separated); rows with score <= 0 are dropped.

    Raises:
        ValueError: naming the file and line of a row that is neither.
    """
    qrels: Qrels = defaultdict(dict)
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.rstrip("\n").split("\t") if "\t" in line else line.split()
            if not any(f.strip() for f in fields):
                continue
            row = _qrels_row([f.strip() for f in fields])
            try:
                score = int(float(row[2])) if row else None
            except ValueError:
                score = None
            if score is None:
                if lineno == 1 and row:  # a header
                    continue
                raise InputError(
                    f"{path}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>score' (BEIR) or 'qid 0 docid score' (TREC)"
                )
            if score > 0:
                qrels[row[0]][row[1]] = score
    return dict(qrels)


def load_queries(path: Path | str) -> dict[str, str]:
    """Read BEIR queries JSONL (``{"_id" or "id", "text"}`` per line).

    Raises:
        ValueError: naming the file, the line and the expected format.
    """
    queries: dict[str, str] = {}
    expected = 'BEIR queries JSONL: one {"_id": ..., "text": ...} object per line'
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}: not JSON ({exc.msg}); expected {expected}") from exc
            qid = record.get("_id", record.get("id")) if isinstance(record, dict) else None
            if qid is None or not isinstance(record.get("text"), str):
                raise InputError(f'{path}:{lineno}: a query needs "_id" (or "id") and "text"; expected {expected}')
            queries[str(qid)] = record["text"]
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


def verdict_label(found: bool, reason: str | None) -> str:
    """A citation verdict as one label: ``found`` or the reason without its detail (``no such article``)."""
    return "found" if found else (reason or "").split(" (")[0]


def judge_verdicts(cases: Iterable[Mapping[str, Any]], got: Mapping[str, list[tuple[str, str, str]]]) -> dict[str, Any]:
    """Score citation verdicts against expected ones.

    Args:
        cases: ``{"id", "citations": [{"law_text", "article", "expect"}]}`` in text order.
        got: case id -> ``(law as written, article, label)`` of each citation found, in text order.

    A citation is right when the one at its position has the same law as written, article and label; a
    false certification is a ``found`` where something else was expected; extra citations are counted.
    """
    right = total = false_found = extra = 0
    wrong: list[dict[str, Any]] = []
    for case in cases:
        found = got.get(case["id"], [])
        extra += max(0, len(found) - len(case["citations"]))
        for at, want in enumerate(case["citations"]):
            total += 1
            have = found[at] if at < len(found) else None
            expected = (want["law_text"], want["article"], want["expect"])
            if have == expected:
                right += 1
                continue
            false_found += have is not None and have[2] == "found"
            wrong.append({"id": case["id"], "expected": list(expected), "got": list(have) if have else None})
    return {
        "citations": total,
        "right": right,
        "accuracy": round(right / total, 4) if total else 0.0,
        "certified_falsely": false_found,
        "extra_citations": extra,
        "wrong": wrong,
    }
