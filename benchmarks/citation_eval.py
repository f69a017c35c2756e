"""Citation questions built from an index's own statute articles, and the rank of the cited article.

    python benchmarks/citation_eval.py --index IDX [--n 300] [--seed 0] [--mode hybrid] [--out set.jsonl]

Each question cites one article of a law the index holds, in a form drawn at random: the full title or
the title without 中华人民共和国 (in 《》 or bare), Chinese or Arabic (also full-width) numerals, 之一
articles where the law has them, an optional 第M款, stray spaces, Traditional characters, and one of
several question stems. It prints one JSON object: the share of questions whose first result is the cited
article, with citation lookup on and off (same index, same queries).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.bench.machine import machine_info  # noqa: E402
from app.services import build_services  # noqa: E402
from app.settings import Settings  # noqa: E402
from retrieval.citations import COUNTRY_PREFIX  # noqa: E402
from retrieval.searcher import HYBRID, SearchOptions  # noqa: E402

STEMS = [
    "{c}怎么规定的？",
    "{c}的内容是什么",
    "请问{c}讲了什么",
    "根据{c}，这种情况怎么处理？",
    "{c}",
    "{c}规定了什么？",
]
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


def _numeral(label: str, number: int, rng: random.Random) -> str:
    """The article as written: its own label (Chinese numerals) or with Arabic digits."""
    sub = label.split("条", 1)[1] if "条之" in label else ""
    form = rng.choice(["cn", "arabic", "fullwidth", "spaced"])
    if form == "cn":
        return label
    digits = str(number)
    if form == "fullwidth":
        digits = digits.translate(FULLWIDTH)
    if form == "spaced":
        return f"第 {digits} 条{sub}"
    return f"第{digits}条{sub}"


def build_set(services, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    articles: dict[str, list[tuple[str, int]]] = {}
    for _, _, _, meta in services.index.docs.iter_fields():
        if meta.get("law") and isinstance(meta.get("article_no"), int) and meta.get("part", 1) == 1:
            articles.setdefault(meta["law"], []).append((meta["article"], meta["article_no"]))
    laws = sorted(law for law in articles if law.startswith(COUNTRY_PREFIX))
    from opencc import OpenCC

    to_traditional = OpenCC("s2t")
    questions = []
    for i in range(n):
        law = rng.choice(laws)
        label, number = rng.choice(articles[law])
        name = law if rng.random() < 0.3 else law.removeprefix(COUNTRY_PREFIX)
        name = f"《{name}》" if rng.random() < 0.5 else name
        cite = name + _numeral(label, number, rng)
        if rng.random() < 0.2:
            cite += "第一款"
        text = rng.choice(STEMS).format(c=cite)
        if rng.random() < 0.15:
            text = to_traditional.convert(text)
        questions.append({"id": f"c{i:04d}", "text": text, "law": law, "article": label})
    return questions


def rank_one(services, questions: list[dict], mode: str) -> float:
    hits = 0
    for q in questions:
        top = services.searcher.search(q["text"], SearchOptions(top_k=1, mode=mode)).hits
        meta = top[0].chunk.metadata if top else {}
        hits += meta.get("law") == q["law"] and meta.get("article") == q["article"]
    return hits / len(questions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", default=HYBRID)
    parser.add_argument("--out", type=Path, help="Write the questions here (JSONL)")
    args = parser.parse_args()
    on = build_services(Settings(index=args.index, microbatch=False))
    questions = build_set(on, args.n, args.seed)
    if args.out:
        args.out.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions), encoding="utf-8")
    with_lookup = rank_one(on, questions, args.mode)
    on.close()
    off = build_services(Settings(index=args.index, microbatch=False, citations=False))
    without = rank_one(off, questions, args.mode)
    off.close()
    print(
        json.dumps(
            {
                "questions": len(questions),
                "mode": args.mode,
                "rank1_with_citation_lookup": round(with_lookup, 4),
                "rank1_without": round(without, 4),
                "index": str(args.index),
                "machine": machine_info(),
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
