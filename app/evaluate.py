"""``zhrag eval``: run queries or dialogues through the searcher and score them against qrels."""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from app.services import Services
from retrieval.dialogue import DialogueMode, DialogueQueries
from retrieval.embedders.cache import CachedEmbedder
from retrieval.errors import InputError, UserError
from retrieval.metrics import (
    aggregate_hits,
    doc_key,
    evaluate_run,
    load_qrels,
    load_queries,
    per_query_metrics,
)
from retrieval.searcher import BM25, DEFAULT_CANDIDATES, HYBRID, Searcher, SearchMode, SearchOptions, normalize_query

__all__ = [
    "EvalConfig",
    "EvalInputError",
    "run_eval",
    "load_dialogues",
    "qrels_coverage",
    "EVAL_DEPTH",
    "EVAL_CANDIDATES",
]

log = logging.getLogger(__name__)

EVAL_DEPTH = 100
"""Documents kept per query (Recall@100 needs 100)."""
EVAL_CANDIDATES = DEFAULT_CANDIDATES
"""Chunks retrieved per query (and per leg) before aggregating to documents: the serving default."""


@dataclass
class EvalConfig:
    """What to evaluate."""

    qrels: Path
    queries: Path | None = None
    dialogues: Path | None = None
    dialogue_mode: DialogueMode = "auto"
    mode: SearchMode = HYBRID
    rerank: bool = False
    doc_id: str = "{doc_id}"
    limit: int | None = None
    rewrite: bool = False
    """Dialogues also go through the configured LLM rewriter (``ZHRAG_REWRITE_*``); off, the builder is LLM-free."""


def load_dialogues(path: Path) -> dict[str, list[dict[str, str]]]:
    """Read dialogues JSONL (``{"id", "messages": [...]}`` per line)."""
    dialogues: dict[str, list[dict[str, str]]] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                record = json.loads(line)
                if "id" not in record or not isinstance(record.get("messages"), list):
                    raise InputError(f'{path}:{lineno}: a dialogue needs "id" and a "messages" list')
                dialogues[str(record["id"])] = record["messages"]
    return dialogues


def _eval_searcher(services: Services, texts: list[str]) -> Searcher:
    """The services' searcher, with every query embedded in one batch up front.

    A non-cached embedder is wrapped in an in-memory cache on a copy of the searcher, so the shared
    services object is left as it was.
    """
    searcher = services.searcher
    if searcher.embedder is None:
        return searcher
    if not isinstance(searcher.embedder, CachedEmbedder):
        searcher = copy.copy(searcher)
        searcher.embedder = CachedEmbedder(services.searcher.embedder, ":memory:")
    # normalised as the searcher will, so each search finds its vector in the cache
    searcher.embedder.embed_queries([normalize_query(t) for t in texts])
    return searcher


class EvalInputError(UserError, ValueError):
    """The queries, dialogues or qrels cannot score this index (e.g. no qrels id exists in it)."""


MIN_COVERAGE = 0.5
"""Below this share of relevant ids present in the index, ``eval`` warns: scores would mostly measure absence."""


def qrels_coverage(services: Services, template: str, relevant: set[str]) -> tuple[float, str | None]:
    """Share of ``relevant`` ids that some chunk of the index formats to, and one id the index does give."""
    keys = {doc_key(template, doc_id, title, meta) for _, doc_id, title, meta in services.index.docs.iter_fields()}
    keys.discard("")
    found = len(relevant & keys) / len(relevant) if relevant else 0.0
    return found, next(iter(sorted(keys)), None)


def _rewrite_stats(services: Services) -> dict[str, int] | None:
    rewriter = services.dialogue.rewriter
    if not hasattr(rewriter, "hits"):
        return None
    return {"cached": rewriter.hits, "asked": rewriter.misses, "failed": rewriter.failures}  # type: ignore[union-attr]


def run_eval(services: Services, config: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """Score the index behind ``services``; returns metrics plus a ``per_query`` list.

    Raises:
        EvalInputError: when no query has qrels, or no relevant id of the qrels is in the index under
            ``config.doc_id`` (a wrong ``--doc-id`` would otherwise score 0.0 and look like a result).
    """
    start = time.perf_counter()
    qrels = load_qrels(config.qrels)
    work = _queries_to_run(services, config, qrels)
    ids = sorted(work)[: config.limit] if config.limit else sorted(work)
    if not ids:
        raise EvalInputError(f"no query or dialogue id has judgements in {config.qrels}")
    coverage = _checked_coverage(
        services, config, {doc for qid in ids for doc, grade in qrels[qid].items() if grade > 0}
    )
    run = _run(services, config, {qid: work[qid] for qid in ids}, progress)
    scored = {qid: qrels[qid] for qid in ids}
    metrics = evaluate_run(scored, run)
    per_query = per_query_metrics(scored, run)
    return {
        **metrics,
        "queries": len(ids),
        "qrels_coverage": round(coverage, 4),
        "mode": config.mode,
        "rerank": config.rerank,
        "dialogue_mode": config.dialogue_mode if config.dialogues else None,
        "rewrite": _rewrite_stats(services) if config.rewrite else None,
        "model": services.index.manifest["embedder"]["model"],
        "index": str(services.index.root),
        "seconds": round(time.perf_counter() - start, 1),
        "per_query": [
            {"id": qid, **per_query[qid], "top10": list(run[qid])[:10], "relevant": sorted(qrels[qid])} for qid in ids
        ],
    }


def _queries_to_run(
    services: Services, config: EvalConfig, qrels: dict[str, dict[str, int]]
) -> dict[str, DialogueQueries]:
    """The queries of every judged question or dialogue (a dialogue's built as the served builder would)."""
    if config.dialogues:
        dialogues = load_dialogues(config.dialogues)
        builder, search_mode = services.dialogue, services.searcher.effective_mode(config.mode)
        if config.rewrite and builder.rewriter is None:
            raise EvalInputError("--rewrite needs an LLM endpoint: set ZHRAG_REWRITE_BASE_URL and ZHRAG_REWRITE_MODEL")
        if not config.rewrite:
            builder = copy.copy(builder)  # the served builder keeps its rewriter
            builder.rewriter = None
        return {
            qid: builder.build(msgs, config.dialogue_mode, search_mode)
            for qid, msgs in dialogues.items()
            if qid in qrels
        }
    if config.queries:
        return {
            qid: DialogueQueries([text], [1.0]) for qid, text in load_queries(config.queries).items() if qid in qrels
        }
    raise InputError("give --queries or --dialogues")


def _checked_coverage(services: Services, config: EvalConfig, relevant: set[str]) -> float:
    """The share of relevant ids the index holds under ``--doc-id``: none is an error, few a warning."""
    coverage, example = qrels_coverage(services, config.doc_id, relevant)
    if coverage == 0:
        sample = next(iter(sorted(relevant)), "")
        raise EvalInputError(
            f"none of the {len(relevant)} relevant ids in {config.qrels} is in the index under --doc-id "
            f"{config.doc_id!r}: the qrels name e.g. {sample!r}, the index gives e.g. {example!r}"
        )
    if coverage < MIN_COVERAGE:
        log.warning(
            "only %.0f%% of the relevant ids in %s are in the index (--doc-id %r): the scores mostly measure "
            "what is missing",
            coverage * 100,
            config.qrels,
            config.doc_id,
        )
    return coverage


def _run(
    services: Services, config: EvalConfig, work: dict[str, DialogueQueries], progress: bool
) -> dict[str, dict[str, float]]:
    """Search every question; per question, its documents' scores (keyed by ``--doc-id``), best first."""
    searcher = services.searcher
    if config.mode != BM25:
        searcher = _eval_searcher(services, [q for queries in work.values() for q in queries.queries])
    base = SearchOptions(
        top_k=EVAL_DEPTH if config.rerank else EVAL_CANDIDATES,
        candidates=EVAL_CANDIDATES,
        mode=config.mode,
        rerank=config.rerank,  # type: ignore[arg-type]
    )
    run: dict[str, dict[str, float]] = {}
    for qid in tqdm(list(work), desc="eval", unit="q", disable=not progress):
        outcome = searcher.search(work[qid].queries, work[qid].search_options(base, searcher.weights))
        keyed = (
            (doc_key(config.doc_id, h.chunk.doc_id, h.chunk.title, h.chunk.metadata), h.score) for h in outcome.hits
        )
        run[qid] = aggregate_hits(keyed, EVAL_DEPTH)
    return run
