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
import csv
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.evaluate import EvalConfig, run_eval  # noqa: E402
from app.services import build_services  # noqa: E402
from app.settings import Settings  # noqa: E402

MARKERS = ("另外，", "换个问题，", "对了，", "还有个问题，")
MODES = ("last", "concat", "concat-user", "auto")


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
    parser.add_argument("--mode", choices=["bm25", "dense", "hybrid"], default="bm25")
    parser.add_argument("--embed-base-url")
    parser.add_argument("--embed-cache", type=Path)
    args = parser.parse_args()

    dialogues = [json.loads(line) for line in args.dialogues.open(encoding="utf-8") if line.strip()]
    questions = {q["id"]: q["text"] for q in map(json.loads, args.queries.open(encoding="utf-8"))}
    rows = switched(dialogues, questions)
    with args.qrels.open(encoding="utf-8") as f:
        qrels = [r for r in csv.reader(f, delimiter="\t")][1:]
    by_query: dict[str, list[list[str]]] = {}
    for query_id, doc_id, score in qrels:
        by_query.setdefault(query_id, []).append([doc_id, score])
    options = {k: v for k, v in (("embed_base_url", args.embed_base_url), ("embed_cache", args.embed_cache)) if v}
    services = build_services(Settings(index=args.index, microbatch=False, **options), load_model=args.mode != "bm25")
    out: dict[str, object] = {"dialogues": len(rows), "mode": args.mode, "nDCG@10": {}}
    with tempfile.TemporaryDirectory() as tmp:
        path, qrels_path = Path(tmp) / "dialogues.jsonl", Path(tmp) / "qrels.tsv"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        lines = ["query-id\tcorpus-id\tscore"]
        lines += [f"{r['id']}\t{d}\t{s}" for r in rows for d, s in by_query.get(r["source_query"], [])]
        qrels_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        for mode in MODES:
            config = EvalConfig(qrels=qrels_path, dialogues=path, mode=args.mode, dialogue_mode=mode)
            result = run_eval(services, config, progress=False)
            out["nDCG@10"][mode] = round(float(result["nDCG@10"]), 4)  # type: ignore[index]
    services.close()
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
