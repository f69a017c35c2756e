"""Topic switches in the last turn: each dialogue's history, then a new question that opens with a marker.

    python benchmarks/switch_eval.py --index IDX --dialogues D.jsonl --queries Q.jsonl --qrels Q.tsv
        [--mode bm25|hybrid] [--embed-base-url URL --embed-cache F]

Dialogue ``i`` keeps every message before its last user turn; the last turn becomes a marker (另外， /
换个问题， / 对了， / 还有个问题，, in turn) followed by the source question (``source_query`` in ``Q.jsonl``)
of dialogue ``i + 1`` — a standalone question on another topic — and is scored against that question's
qrels. Prints nDCG@10 per ``--dialogue-mode`` (last is the ceiling here: the question needs no history).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dialogue_eval import score_modes  # noqa: E402 - beside this script

from retrieval.metrics import load_qrels, load_queries  # noqa: E402
from retrieval.searcher import BM25, SEARCH_MODES  # noqa: E402

MARKERS = ("另外，", "换个问题，", "对了，", "还有个问题，")


def switched(dialogues: list[dict], questions: dict[str, str]) -> list[dict]:
    """The last-turn switch variant of each dialogue (see the module docstring)."""
    rows = []
    for i, row in enumerate(dialogues):
        source = dialogues[(i + 1) % len(dialogues)]["source_query"]
        history = row["messages"][: max(j for j, m in enumerate(row["messages"]) if m["role"] == "user")]
        last = {"role": "user", "content": MARKERS[i % len(MARKERS)] + questions[source]}
        rows.append({"id": f"{row['id']}-switch", "source_query": source, "messages": [*history, last]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--dialogues", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True, help="queries.jsonl holding the source questions")
    parser.add_argument("--qrels", type=Path, required=True, help="qrels.tsv of those questions")
    parser.add_argument("--mode", choices=SEARCH_MODES, default=BM25)
    parser.add_argument("--embed-base-url")
    parser.add_argument("--embed-cache", type=Path)
    args = parser.parse_args()

    dialogues = [json.loads(line) for line in args.dialogues.open(encoding="utf-8") if line.strip()]
    rows = switched(dialogues, load_queries(args.queries))
    judged = load_qrels(args.qrels)
    with tempfile.TemporaryDirectory() as tmp:
        qrels = Path(tmp) / "qrels.tsv"
        lines = ["query-id\tcorpus-id\tscore"]
        lines += [f"{r['id']}\t{d}\t{g}" for r in rows for d, g in judged.get(r["source_query"], {}).items()]
        qrels.write_text("\n".join(lines) + "\n", encoding="utf-8")
        per_mode, _ = score_modes(args, rows, qrels)
    means = {mode: round(sum(s.values()) / len(s), 4) for mode, s in per_mode.items()}
    print(json.dumps({"dialogues": len(rows), "mode": args.mode, "nDCG@10": means}, ensure_ascii=False))


if __name__ == "__main__":
    main()
