"""benchmarks/dialogue_eval.py's statistics: the ratio interval and the spread of paired differences."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "dialogue_eval.py"
_spec = importlib.util.spec_from_file_location("dialogue_eval", SCRIPT)
dialogue_eval = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dialogue_eval)


def test_paired_spread_counts_and_quantiles() -> None:
    auto = np.array([1.0, 0.5, 0.0, 0.3, 0.3])
    other = np.array([0.5, 0.5, 0.2, 0.3, 0.0])
    spread = dialogue_eval.paired_spread(auto, other)
    assert (spread["better"], spread["same"], spread["worse"]) == (2, 2, 1)
    assert spread["diff_p10_p25_p50_p75_p90"][2] == 0.0  # median of [0.5, 0, -0.2, 0, 0.3]
    assert spread["diff_p10_p25_p50_p75_p90"][0] < 0 < spread["diff_p10_p25_p50_p75_p90"][-1]


def test_ratio_interval_brackets_the_ratio() -> None:
    rng = np.random.default_rng(1)
    other = rng.uniform(0, 1, 200)
    auto = other * 1.2
    ratio, low, high = dialogue_eval.ratio_interval(auto, other)
    assert (
        abs(ratio - 1.2) < 1e-9 and abs(low - 1.2) < 1e-6 and abs(high - 1.2) < 1e-6
    )  # the same ratio in every resample
    noisy = other + rng.normal(0, 0.2, 200)
    ratio, low, high = dialogue_eval.ratio_interval(noisy, other)
    assert low < ratio < high


def test_standalone_queries_map_each_dialogue_to_its_source_question(tmp_path: Path) -> None:
    dialogues = Path(__file__).resolve().parents[2] / "data" / "eval" / "multiturn_legal_extra" / "dialogues.jsonl"
    rows = [json.loads(line) for line in dialogues.read_text(encoding="utf-8").splitlines()[:3]]
    queries = tmp_path / "queries.jsonl"
    texts = {r["source_query"]: f"原问题{i}：{r['messages'][0]['content']}" for i, r in enumerate(rows)}
    queries.write_text("".join(json.dumps({"id": k, "text": v}, ensure_ascii=False) + "\n" for k, v in texts.items()))
    got = dialogue_eval.standalone_queries(rows, queries)
    assert [q["id"] for q in got] == [r["id"] for r in rows]
    assert [q["text"] for q in got] == [texts[r["source_query"]] for r in rows]
    with pytest.raises(SystemExit, match=rows[0]["id"]):
        dialogue_eval.standalone_queries([{**rows[0], "source_query": "q-none"}], queries)


def test_the_oracle_rewriter_answers_each_conversation_with_its_own_question() -> None:
    dialogues = Path(__file__).resolve().parents[2] / "data" / "eval" / "multiturn_legal_extra" / "dialogues.jsonl"
    rows = [json.loads(line) for line in dialogues.read_text(encoding="utf-8").splitlines()[:3]]
    questions = [{"id": r["id"], "text": f"原问题：{r['messages'][-1]['content']}"} for r in rows]
    oracle = dialogue_eval.OracleRewriter(rows, questions)
    assert [oracle.rewrite(r["messages"]) for r in rows] == [q["text"] for q in questions]
    assert oracle.rewrite([*rows[0]["messages"][:-1], {"role": "user", "content": "那他呢？"}]) is None
