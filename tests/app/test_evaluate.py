from __future__ import annotations

import json
from pathlib import Path

from app.evaluate import EvalConfig, run_eval
from app.services import Services

DIALOGUES = [
    {
        "id": "t1",
        "messages": [
            {"role": "user", "content": "我在网上药店买到的药，成份和说明书上写的根本不一样。"},
            {"role": "assistant", "content": "很抱歉听到这个情况。"},
            {"role": "user", "content": "这种能算假药吗？"},
        ],
    },
    {
        "id": "t2",
        "messages": [
            {"role": "user", "content": "我做手术前，医生没有告诉我手术风险。"},
            {"role": "assistant", "content": "这种情况确实让人担心。"},
            {"role": "user", "content": "后来伤口感染了，住了很久的院。"},
            {"role": "assistant", "content": "先把身体养好。"},
            {"role": "user", "content": "那医院要不要承担责任？"},
        ],
    },
]
QRELS = (
    "query-id\tcorpus-id\tscore\n"
    "t1\t中华人民共和国药品管理法 第九十八条\t1\n"
    "t2\t中华人民共和国民法典 第一千二百一十九条\t1\n"
)


def _files(tmp_path: Path) -> tuple[Path, Path]:
    dialogues, qrels = tmp_path / "d.jsonl", tmp_path / "qrels.tsv"
    dialogues.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in DIALOGUES) + "\n", encoding="utf-8")
    qrels.write_text(QRELS, encoding="utf-8")
    return dialogues, qrels


def test_dialogue_eval_leaves_the_shared_services_as_they_were(services: Services, tmp_path: Path) -> None:
    dialogues, qrels = _files(tmp_path)
    embedder = services.searcher.embedder
    config = EvalConfig(qrels=qrels, dialogues=dialogues, mode="hybrid", doc_id="{law} {article}")
    result = run_eval(services, config, progress=False)
    assert services.searcher.embedder is embedder and services.embedder is embedder
    assert result["queries"] == 2 and result["dialogue_mode"] == "auto" and 0 <= result["nDCG@10"] <= 1


def test_bm25_dialogue_eval_finds_the_articles_from_context(services: Services, tmp_path: Path) -> None:
    dialogues, qrels = _files(tmp_path)
    scores = {
        mode: run_eval(
            services,
            EvalConfig(qrels=qrels, dialogues=dialogues, mode="bm25", doc_id="{law} {article}", dialogue_mode=mode),
            progress=False,
        )
        for mode in ("last", "auto")
    }
    # The last turns alone never name 假药的成份 or 手术风险; the builder carries them from earlier turns.
    assert scores["auto"]["Recall@10"] == 1.0
    assert scores["auto"]["nDCG@10"] > scores["last"]["nDCG@10"]


def test_eval_refuses_qrels_the_index_cannot_match(sample_index, tmp_path, capsys, caplog) -> None:
    """A wrong --doc-id used to score 0.0 and exit 0; now it is an error naming both id forms."""
    import json as _json

    from app.cli import EXIT_OK, EXIT_USAGE, main

    queries = tmp_path / "q.jsonl"
    queries.write_text(
        "\n".join(
            _json.dumps({"id": f"q{i}", "text": t}, ensure_ascii=False) for i, t in enumerate(["医师的义务", "假药"])
        )
        + "\n",
        encoding="utf-8",
    )
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text(
        "query-id\tdoc\tscore\nq0\t中华人民共和国医师法 第二十三条\t1\nq1\t中华人民共和国药品管理法 第九十八条\t1\n"
    )
    base = ["eval", "--index", str(sample_index), "--queries", str(queries), "--qrels", str(qrels), "--mode", "bm25"]
    assert main([*base, "--doc-id", "{law}{article}", "--json"]) == EXIT_USAGE  # missing space
    err = capsys.readouterr().err
    assert "none of the 2 relevant ids" in err and "中华人民共和国医师法 第二十三条" in err and "--doc-id" in err
    assert main([*base, "--doc-id", "{law} {article}", "--json"]) == EXIT_OK
    assert _json.loads(capsys.readouterr().out)["qrels_coverage"] == 1.0
    qrels.write_text(
        qrels.read_text() + "q1\t不存在的法 第一条\t1\nq1\t不存在的法 第二条\t1\nq1\t不存在的法 第三条\t1\n"
    )
    with caplog.at_level("WARNING"):
        assert main([*base, "--doc-id", "{law} {article}", "--json"]) == EXIT_OK
    assert _json.loads(capsys.readouterr().out)["qrels_coverage"] == 0.4 and "only 40%" in caplog.text
