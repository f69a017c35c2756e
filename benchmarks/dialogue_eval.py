"""Every dialogue mode on a dialogue set, and auto's ratio to each baseline with a paired bootstrap interval.

    python benchmarks/dialogue_eval.py --index IDX --dialogues D.jsonl --qrels Q.tsv [--mode bm25|hybrid]
        [--doc-id "{law} {article}"] [--ids mt-more-100..mt-more-199] [--embed-base-url URL --embed-cache F]
        [--source-queries queries.jsonl [--oracle-rewrite 1,2,4]]

``--ids LO..HI`` keeps the dialogues whose id lies between LO and HI (inclusive, compared as text), e.g.
one half of a set that is split into a tuning and a report part. Prints one JSON object: nDCG@10 per
``--dialogue-mode`` (last, concat, concat-user, auto), Recall@10 per mode and, for auto against each other mode, the ratio of
the means with a 95% interval from 5,000 paired bootstrap resamples of the dialogues (seed 0), and the spread
of the per-dialogue differences: on how many dialogues auto is better / the same / worse, and their quartiles.
``--source-queries`` (the BEIR queries the dialogues' ``source_query`` ids name) also scores each
dialogue's original standalone question with the same judgements: how much of it a conversation keeps.
``--oracle-rewrite W,…`` then runs auto with an oracle in place of the LLM rewriter (it returns that
question), fused at each rewrite weight W: what a perfect rewrite could add, and how much fusion keeps.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.evaluate import EvalConfig, run_eval  # noqa: E402
from app.services import build_services  # noqa: E402
from app.settings import Settings  # noqa: E402
from retrieval.metrics import load_queries  # noqa: E402
from retrieval.searcher import BM25, SEARCH_MODES  # noqa: E402

MODES = ("last", "concat", "concat-user", "auto")
STANDALONE = "standalone"
RESAMPLES = 5000


def ratio_interval(auto: np.ndarray, other: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """mean(auto) / mean(other) and its 95% paired bootstrap interval (dialogues resampled with replacement)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(auto), size=(RESAMPLES, len(auto)))
    a, o = auto[picks].mean(axis=1), other[picks].mean(axis=1)
    ratios = np.divide(a, o, out=np.full_like(a, np.nan), where=o > 0)
    low, high = np.nanpercentile(ratios, [2.5, 97.5])
    return float(auto.mean() / other.mean()), float(low), float(high)


def paired_spread(auto: np.ndarray, other: np.ndarray) -> dict[str, object]:
    """How the per-dialogue differences auto - other spread: counts of better / same / worse (|d| > 1e-9)
    and the 10th, 25th, 50th, 75th and 90th percentiles."""
    diff = auto - other
    return {
        "better": int((diff > 1e-9).sum()),
        "same": int((abs(diff) <= 1e-9).sum()),
        "worse": int((diff < -1e-9).sum()),
        "diff_p10_p25_p50_p75_p90": [round(float(x), 3) for x in np.percentile(diff, [10, 25, 50, 75, 90])],
    }


def standalone_queries(rows: list[dict], queries: Path) -> list[dict]:
    """One BEIR query per dialogue: its ``source_query``'s text under the dialogue's id."""
    texts = load_queries(queries)
    missing = sorted(r["id"] for r in rows if r.get("source_query") not in texts)
    if missing:
        raise SystemExit(f"{queries}: no source question for {len(missing)} dialogues, e.g. {missing[0]}")
    return [{"id": r["id"], "text": texts[r["source_query"]]} for r in rows]


class OracleRewriter:
    """Stands in for the LLM rewriter: each conversation's original question (an upper bound, not an LLM)."""

    def __init__(self, rows: list[dict], questions: list[dict]) -> None:
        self._questions = {_conversation_key(r["messages"]): q["text"] for r, q in zip(rows, questions, strict=True)}

    def rewrite(self, messages: list[dict]) -> str | None:
        return self._questions.get(_conversation_key(messages))


def _conversation_key(messages: list[dict]) -> str:
    return json.dumps(messages, ensure_ascii=False, sort_keys=True)


def score_modes(
    args: argparse.Namespace, rows: list[dict], qrels: Path, doc_id: str = "{doc_id}"
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """nDCG@10 per dialogue and Recall@10 of every ``--dialogue-mode`` for ``rows`` (dialogue records) on
    ``args.index`` in ``args.mode``, with the embedding server and cache of ``args`` (also switch_eval's)."""
    options = {k: v for k, v in (("embed_base_url", args.embed_base_url), ("embed_cache", args.embed_cache)) if v}
    services = build_services(Settings(index=args.index, microbatch=False, **options), load_model=args.mode != BM25)
    per_mode, recall = {}, {}

    def record(name: str, config: EvalConfig) -> None:
        result = run_eval(services, config, progress=False)
        per_mode[name] = {q["id"]: q["nDCG@10"] for q in result["per_query"]}
        recall[name] = round(float(result["Recall@10"]), 4)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dialogues.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        for mode in MODES:
            record(mode, EvalConfig(qrels=qrels, dialogues=path, mode=args.mode, dialogue_mode=mode, doc_id=doc_id))
        if getattr(args, "source_queries", None):
            questions = standalone_queries(rows, args.source_queries)
            queries = Path(tmp) / "queries.jsonl"
            queries.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions), encoding="utf-8")
            record(STANDALONE, EvalConfig(qrels=qrels, queries=queries, mode=args.mode, doc_id=doc_id))
            services.dialogue.rewriter = OracleRewriter(rows, questions)
            for weight in getattr(args, "oracle_rewrite", None) or []:
                services.dialogue.rewrite_weight = weight
                config = EvalConfig(qrels=qrels, dialogues=path, mode=args.mode, doc_id=doc_id, rewrite=True)
                record(f"auto+oracle@{weight:g}", config)
    services.close()
    return per_mode, recall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--dialogues", type=Path, required=True)
    parser.add_argument("--qrels", type=Path, required=True)
    parser.add_argument("--mode", choices=SEARCH_MODES, default=BM25)
    parser.add_argument("--doc-id", default="{doc_id}")
    parser.add_argument("--ids", help="LO..HI: only the dialogues with LO <= id <= HI")
    parser.add_argument("--embed-base-url", help="Remote embedding server of the index (e.g. the e5 stand-in)")
    parser.add_argument("--embed-cache", type=Path)
    parser.add_argument("--source-queries", type=Path, help="BEIR queries.jsonl naming the dialogues' source_query")
    parser.add_argument(
        "--oracle-rewrite",
        type=lambda text: [float(w) for w in text.split(",")],
        help="W,...: auto with the original question as its 'LLM rewrite', at these fusion weights",
    )
    args = parser.parse_args()
    if args.oracle_rewrite and not args.source_queries:
        parser.error("--oracle-rewrite needs --source-queries")

    rows = [json.loads(line) for line in args.dialogues.open(encoding="utf-8") if line.strip()]
    if args.ids:
        low, high = args.ids.split("..")
        rows = [r for r in rows if low <= r["id"] <= high]
    per_mode, recall = score_modes(args, rows, args.qrels, args.doc_id)
    ids = sorted(per_mode["auto"])
    scores = {mode: np.array([per_mode[mode][i] for i in ids]) for mode in per_mode}
    out = {
        "dialogues": len(ids),
        "mode": args.mode,
        "nDCG@10": {mode: round(float(s.mean()), 4) for mode, s in scores.items()},
        "Recall@10": recall,
        "auto_vs": {},
    }
    for mode in [m for m in scores if m != "auto"]:
        ratio, low, high = ratio_interval(scores["auto"], scores[mode])
        out["auto_vs"][mode] = {
            "ratio": round(ratio, 3),
            "ci95": [round(low, 3), round(high, 3)],
            **paired_spread(scores["auto"], scores[mode]),
        }
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
