"""Slow end-to-end checks on the real statute books (``python -m pytest -m slow``; need ../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import EXIT_OK, main
from tests.conftest import DATA, EVAL, LAWREF, needs_shared

# Reference jieba + bm25s nDCG@10 on stard_lawref_core (../shared/eval/BASELINES.md) and issue #3's bar.
REFERENCE_BM25_NDCG = 0.385
REQUIRED_GAIN = 1.10

pytestmark = [pytest.mark.slow, needs_shared]


@pytest.fixture(scope="module")
def lawref_index(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    index = tmp_path_factory.mktemp("lawref") / "index"
    assert main(["ingest", str(LAWREF), "--index", str(index), "--model", str(tiny_model_dir), "--quiet"]) == EXIT_OK
    return index


def test_all_statute_books_ingest_with_law_and_article(lawref_index: Path, capsys) -> None:
    assert main(["info", "--index", str(lawref_index)]) == EXIT_OK
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["counts"]["documents"] == 690 and manifest["counts"]["chunks"] > 30_000
    assert (
        main(
            [
                "search",
                "个体工商户的债务，个人经营的，以个人财产承担",
                "--index",
                str(lawref_index),
                "--mode",
                "bm25",
                "--json",
            ]
        )
        == EXIT_OK
    )
    top = json.loads(capsys.readouterr().out)["results"][0]["metadata"]
    assert (top["law"], top["article"]) == ("中华人民共和国民法典", "第五十六条")


def test_bm25_beats_reference_by_ten_percent(lawref_index: Path, capsys) -> None:
    args = [
        "eval",
        "--index",
        str(lawref_index),
        "--queries",
        str(EVAL / "stard_lawref_core" / "queries.jsonl"),
        "--qrels",
        str(EVAL / "stard_lawref_core" / "qrels_by_article.tsv"),
        "--doc-id",
        "{law} {article}",
        "--mode",
        "bm25",
        "--json",
    ]
    assert main(args) == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    assert result["queries"] == 1151
    assert result["nDCG@10"] >= REFERENCE_BM25_NDCG * REQUIRED_GAIN


@pytest.mark.parametrize(
    "dialogues",
    [EVAL / "multiturn_legal", DATA / "eval" / "multiturn_legal_extra"],
    ids=["public-80", "extra-32"],
)
def test_dialogue_builder_beats_last_turn_and_concatenation(lawref_index: Path, dialogues: Path, capsys) -> None:
    """Issue #4's bar in bm25 mode: the builder beats (a) the last turn and (b) all turns by >= 10%."""
    scores = {}
    for mode in ("last", "concat", "concat-user", "auto"):
        args = [
            "eval",
            "--index",
            str(lawref_index),
            "--dialogues",
            str(dialogues / "dialogues.jsonl"),
            "--qrels",
            str(dialogues / "qrels_by_article.tsv"),
            "--doc-id",
            "{law} {article}",
            "--mode",
            "bm25",
            "--dialogue-mode",
            mode,
            "--json",
        ]
        assert main(args) == EXIT_OK
        result = json.loads(capsys.readouterr().out)
        assert result["queries"] in (80, 32) and result["dialogue_mode"] == mode
        scores[mode] = result["nDCG@10"]
    assert scores["auto"] >= REQUIRED_GAIN * scores["last"]
    assert scores["auto"] >= REQUIRED_GAIN * scores["concat"]
    assert scores["auto"] > scores["concat-user"]
