from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.cli import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, main
from tests.conftest import SAMPLE_STATUTES


@pytest.fixture(scope="module")
def cli_index(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    index = tmp_path_factory.mktemp("cli") / "index"
    assert (
        main(["ingest", str(SAMPLE_STATUTES), "--index", str(index), "--model", str(tiny_model_dir), "--quiet"])
        == EXIT_OK
    )
    return index


def test_ingest_json_summary(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "ingest",
            str(SAMPLE_STATUTES / "医师法.md"),
            "--index",
            str(tmp_path / "i"),
            "--model",
            str(tiny_model_dir),
            "--json",
        ]
    )
    assert code == EXIT_OK
    summary = json.loads(capsys.readouterr().out)
    assert summary["documents"] == 1 and summary["chunks"] == 67 and summary["skipped"] == []
    assert {"documents", "chunks", "seconds", "skipped", "tokens"} <= set(summary)


def test_ingest_reports_bad_file_and_exits_nonzero(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(SAMPLE_STATUTES / "医师法.md", src)
    (src / "scan.pdf").write_bytes(b"%PDF-1.4 not a pdf")
    code = main(["ingest", str(src), "--index", str(tmp_path / "i"), "--model", str(tiny_model_dir), "--quiet"])
    err = capsys.readouterr().err
    assert code == EXIT_PARTIAL and "scan.pdf" in err and "indexed 1 document (" in err


def test_search_text_and_json(cli_index: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["search", "医师在执业活动中履行哪些义务", "--index", str(cli_index), "--mode", "bm25", "--top-k", "3"])
        == EXIT_OK
    )
    out = capsys.readouterr().out
    assert "中华人民共和国医师法 第二十三条" in out
    assert (
        main(["search", "假药", "--index", str(cli_index), "--json", "--filter", "law=中华人民共和国药品管理法"])
        == EXIT_OK
    )
    body = json.loads(capsys.readouterr().out)
    assert body["query"] == "假药" and len(body["results"]) == 5
    assert {r["metadata"]["law"] for r in body["results"]} == {"中华人民共和国药品管理法"}


def test_search_json_equals_api_body(cli_index: Path, capsys) -> None:
    from fastapi.testclient import TestClient

    from app.api import create_app
    from app.settings import Settings

    main(["search", "医疗机构泄露患者隐私", "--index", str(cli_index), "--json", "--mode", "bm25"])
    cli_body = json.loads(capsys.readouterr().out)
    with TestClient(create_app(Settings(index=cli_index))) as client:
        api_body = client.post("/search", json={"query": "医疗机构泄露患者隐私", "mode": "bm25"}).json()
    for body in (cli_body, api_body):
        body.pop("took_ms")
    assert cli_body == api_body


def test_search_errors(cli_index: Path, tmp_path: Path, capsys) -> None:
    assert main(["search", "医师", "--index", str(tmp_path / "none")]) == EXIT_USAGE
    assert "no zhrag index" in capsys.readouterr().err
    assert main(["search", "医师", "--index", str(cli_index), "--model", "Qwen/Qwen3-Embedding-8B"]) == EXIT_USAGE
    assert "Qwen3-Embedding-8B" in capsys.readouterr().err
    assert main(["search", "医师", "--index", str(cli_index), "--top-k", "0"]) == EXIT_USAGE
    assert main(["search", "医师", "--index", str(cli_index), "--filter", "nokey"]) == EXIT_USAGE


def test_ingest_into_index_with_other_model_fails(
    cli_index: Path, tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    code = main(
        [
            "ingest",
            str(SAMPLE_STATUTES / "医师法.md"),
            "--index",
            str(cli_index),
            "--model",
            str(tiny_model_dir),
            "--dim",
            "32",
        ]
    )
    assert code == EXIT_USAGE and "64-d" in capsys.readouterr().err


def test_search_messages_file(cli_index: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "chat.json"
    messages = [
        {"role": "user", "content": "我在网上药店买到了假药，吃了以后身体出了问题。"},
        {"role": "assistant", "content": "很抱歉听到这个情况。"},
        {"role": "user", "content": "那这种情况能要求赔偿多少？"},
    ]
    path.write_text(json.dumps({"messages": messages}, ensure_ascii=False), encoding="utf-8")
    assert main(["search", "--messages", str(path), "--index", str(cli_index), "--mode", "bm25", "--json"]) == EXIT_OK
    body = json.loads(capsys.readouterr().out)
    assert body["query"] == "那这种情况能要求赔偿多少？" and "假药" in body["queries"][0]


def test_info(cli_index: Path, capsys) -> None:
    assert main(["info", "--index", str(cli_index)]) == EXIT_OK
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["counts"]["documents"] == 6 and manifest["chunker"]["chunk_size"] == 512


def test_eval_queries_and_dialogues(cli_index: Path, tmp_path: Path, capsys) -> None:
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        json.dumps({"id": "q1", "text": "医师在执业活动中履行哪些义务"}, ensure_ascii=False)
        + "\n"
        + json.dumps({"id": "q2", "text": "禁止生产销售假药"}, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text(
        "query-id\tarticle\tscore\nq1\t中华人民共和国医师法 第二十三条\t1\nq2\t中华人民共和国药品管理法 第九十八条\t1\n"
        "d1\t中华人民共和国药品管理法 第九十八条\t1\n",
        encoding="utf-8",
    )
    base = ["eval", "--index", str(cli_index), "--qrels", str(qrels), "--doc-id", "{law} {article}", "--mode", "bm25"]
    per_query = tmp_path / "pq.jsonl"
    assert main([*base, "--queries", str(queries), "--json", "--per-query", str(per_query)]) == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    assert {"nDCG@10", "MRR@10", "Recall@10", "Recall@100", "queries"} <= set(result)
    assert result["queries"] == 2 and result["Recall@100"] == 1.0 and result["nDCG@10"] > 0.5
    rows = [json.loads(line) for line in per_query.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["id"] == "q1" and rows[0]["top10"][0].startswith("中华人民共和国")
    dialogues = tmp_path / "d.jsonl"
    messages = [
        {"role": "user", "content": "我在网上买到了假药。"},
        {"role": "assistant", "content": "好的。"},
        {"role": "user", "content": "那卖这种东西的违法吗？"},
    ]
    dialogues.write_text(json.dumps({"id": "d1", "messages": messages}, ensure_ascii=False) + "\n", encoding="utf-8")
    for mode in ("last", "concat", "concat-user", "auto"):
        assert main([*base, "--dialogues", str(dialogues), "--dialogue-mode", mode, "--markdown", "demo"]) == EXIT_OK
        row = capsys.readouterr().out.strip()
        assert row.startswith(f"| demo | bm25, dialogue {mode} |") and row.endswith("| 1 |")


def test_bench_reports_latency_per_mode(cli_index: Path, capsys) -> None:
    assert main(["bench", "--index", str(cli_index), "--limit", "4", "--modes", "bm25,hybrid"]) == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    assert set(result["modes"]) == {"bm25", "hybrid"} and result["chunks"] > 300
    for stats in result["modes"].values():
        assert stats["queries"] == 4 and stats["p95_ms"] >= stats["p50_ms"] > 0
    assert result["modes"]["bm25"]["relative_to_bm25"] == 1.0


def test_bench_names_an_unknown_mode(cli_index: Path, capsys) -> None:
    assert main(["bench", "--index", str(cli_index), "--limit", "2", "--modes", "bm25,hybird"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "hybird" in err and "hybrid" in err


def test_rerank_end_to_end(cli_index: Path, tmp_path: Path, tiny_reranker_dir: Path, capsys) -> None:
    """The rerank path through search and eval with a tiny Qwen3 reranker (scores are P("yes"))."""
    args = [
        "search",
        "医疗机构泄露患者隐私",
        "--index",
        str(cli_index),
        "--json",
        "--rerank",
        "--reranker",
        str(tiny_reranker_dir),
    ]
    assert main(args) == EXIT_OK
    body = json.loads(capsys.readouterr().out)
    assert body["reranked"] and len(body["results"]) == 5
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        json.dumps({"id": "q1", "text": "医师在执业活动中履行哪些义务"}, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tarticle\tscore\nq1\t中华人民共和国医师法 第二十三条\t1\n", encoding="utf-8")
    code = main(
        [
            "eval",
            "--index",
            str(cli_index),
            "--queries",
            str(queries),
            "--qrels",
            str(qrels),
            "--doc-id",
            "{law} {article}",
            "--rerank",
            "--reranker",
            str(tiny_reranker_dir),
            "--json",
        ]
    )
    assert code == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    assert result["rerank"] is True and result["queries"] == 1


def test_ingest_of_nothing_readable_exits_2_and_writes_nothing(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    index = tmp_path / "index"
    missing = main(["ingest", str(tmp_path / "nope.md"), "--index", str(index), "--model", str(tiny_model_dir)])
    assert missing == EXIT_USAGE and "nope.md" in capsys.readouterr().err and not (index / "CURRENT").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["ingest", str(empty), "--index", str(index), "--model", str(tiny_model_dir)]) == EXIT_USAGE
    assert "no .txt" in capsys.readouterr().err and not (index / "CURRENT").exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.pdf").write_bytes(b"%PDF-1.4 garbage")
    (broken / "b.txt").write_bytes(b"\xff\xfe\x00\xd8")
    assert main(["ingest", str(broken), "--index", str(index), "--model", str(tiny_model_dir)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "a.pdf" in err and "b.txt" in err and "not changed" in err
    assert not (index / "CURRENT").exists() and not list(index.glob(".staging-*"))


def test_zhrag_index_environment_serves_every_command(cli_index: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("ZHRAG_INDEX", str(cli_index))
    assert main(["info"]) == EXIT_OK and json.loads(capsys.readouterr().out)["counts"]["chunks"] > 300
    assert main(["search", "医师的义务", "--mode", "bm25", "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["results"]
    assert main(["bench", "--limit", "2", "--modes", "bm25"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["index"] == str(cli_index)


MEDICAL_QA = (
    '{"id": "a1", "text": "高血压患者应当低盐饮食，规律服用降压药，不要自行停药，定期监测血压。"}\n'
    '{"id": "a2", "text": "乙肝病毒携带者肝功能正常时一般不需要抗病毒治疗，但要每半年复查肝功能和B超。"}\n'
)


def test_an_index_records_its_domain_and_keeps_it(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    from app.services import build_services
    from app.settings import Settings
    from retrieval.dialogue import TurnWeights, turn_weights
    from retrieval.index import read_manifest

    corpus = tmp_path / "answers.jsonl"
    corpus.write_text(MEDICAL_QA, encoding="utf-8")
    index = tmp_path / "medical"
    flags = ["--index", str(index), "--model", str(tiny_model_dir), "--quiet"]
    assert main(["ingest", str(corpus), *flags, "--domain", "medical"]) == EXIT_OK
    assert read_manifest(index)["domain"] == "medical"
    services = build_services(Settings(index=index), load_model=False)  # serving settings say nothing
    assert services.dialogue.weights == turn_weights("medical") != TurnWeights()
    services.close()
    more = tmp_path / "more.jsonl"
    more.write_text('{"id": "a3", "text": "糖尿病患者要控制主食的量，多吃蔬菜，坚持运动。"}\n', encoding="utf-8")
    assert main(["ingest", str(more), *flags]) == EXIT_OK  # no --domain: the index keeps its own
    assert read_manifest(index)["domain"] == "medical"
    capsys.readouterr()
    assert main(["ingest", str(more), *flags, "--domain", "legal"]) == EXIT_USAGE
    assert f"{index} is a medical index" in capsys.readouterr().err


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_forked_child_that_inherits_the_stop_handler_exits_quietly(sig: str) -> None:
    # An ingest worker runs the parent's handler until its initializer replaces it; Ctrl-C or pkill in
    # that window must end it without a KeyboardInterrupt traceback, while the parent still stops as usual.
    import signal
    import subprocess
    import sys

    script = f"""
import os, signal, sys, time
from ingest.lifecycle import COMMAND
COMMAND.install()
pid = os.fork()
if pid == 0:
    time.sleep(30)
    os._exit(0)
time.sleep(0.3)
os.kill(pid, signal.{sig})
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
try:
    os.kill(os.getpid(), signal.{sig})
    time.sleep(5)
except KeyboardInterrupt:
    print("parent interrupted", COMMAND.cancel.is_set())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    code = 128 + getattr(signal, sig)
    assert done.stdout.split("\n")[:2] == [f"child {code}", "parent interrupted True"], done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr


def test_an_interrupt_after_the_publish_says_the_new_version_is_live(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped while the writer tidies up old versions, after the swap: not "the index was not changed"."""
    from retrieval.index import IndexWriter, current_version

    index, flags = tmp_path / "i", ["--model", str(tiny_model_dir), "--quiet"]
    assert main(["ingest", str(SAMPLE_STATUTES / "医师法.md"), "--index", str(index), *flags]) == EXIT_OK
    before = current_version(index)

    def interrupted(self: IndexWriter, live: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(IndexWriter, "_prune", interrupted)
    capsys.readouterr()
    code = main(["ingest", str(SAMPLE_STATUTES / "药品管理法.md"), "--index", str(index), *flags])
    err = capsys.readouterr().err
    after = current_version(index)
    assert code == EXIT_ERROR and after not in (None, before)
    assert f"interrupted after version {after} was published" in err and "not changed" not in err


def test_eval_names_a_questions_file_given_as_queries(cli_index: Path, tmp_path: Path, capsys) -> None:
    questions = tmp_path / "questions.txt"
    questions.write_text("医生在执业活动中应当履行哪些义务？\n", encoding="utf-8")
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("q1\t医师法.md\t1\n", encoding="utf-8")  # no header: accepted
    code = main(["eval", "--index", str(cli_index), "--qrels", str(qrels), "--queries", str(questions)])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "questions.txt:1" in err and "BEIR queries JSONL" in err


@pytest.mark.parametrize(
    "command",
    [
        ["--help"],
        ["citations", "民法典第1165条；刑法第234条；网络购物法第55条", "--index", "{index}"],
        ["list", "--index", "{index}"],
        ["info", "--index", "{index}"],
    ],
)
def test_commands_that_compute_no_vector_never_load_torch_or_the_model(sample_index: Path, command: list[str]) -> None:
    """What makes ``zhrag citations`` take 12 s is importing torch and loading the model; these commands
    read files and SQLite only (their start-up time is a benchmark: benchmarks/cli_startup.py)."""
    import subprocess
    import sys

    args = [a.replace("{index}", str(sample_index)) for a in command]
    probe = (
        "import sys\nfrom app.cli import main\ntry:\n    code = main(sys.argv[1:])\nexcept SystemExit as exc:\n"
        "    code = exc.code\nheavy = sorted(m for m in ('torch', 'sentence_transformers', 'transformers', 'faiss')"
        " if m in sys.modules)\nprint('HEAVY', heavy, file=sys.stderr)\nsys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 3), done.stderr[-2000:]
    assert "HEAVY []" in done.stderr, done.stderr[-2000:]
    if command[0] == "citations":
        assert "第一千一百六十五条\tfound" in done.stdout and "(unknown law)" in done.stdout


def test_a_second_ingest_is_refused_before_the_model_loads(sample_index: Path, tiny_model_dir: Path) -> None:
    """The lock is taken first: the refusal names the holder, and torch was never imported (it used to come
    after ~20-40 s of model loading). The time it takes is a benchmark (benchmarks/cli_startup.py)."""
    import subprocess
    import sys

    from retrieval.index import current_version, reserve_writer

    probe = (
        "import sys\nfrom app.cli import main\ncode = main(sys.argv[1:])\n"
        "print('TORCH', 'torch' in sys.modules, file=sys.stderr)\nsys.exit(code)"
    )
    before = current_version(sample_index)
    with reserve_writer(sample_index):  # another writer, holding the index
        args = ["ingest", str(SAMPLE_STATUTES / "医师法.md"), "--index", str(sample_index)]
        done = subprocess.run(
            [sys.executable, "-c", probe, *args, "--model", str(tiny_model_dir)], capture_output=True, text=True
        )
    assert done.returncode == EXIT_USAGE and "another ingest is writing" in done.stderr
    assert "TORCH False" in done.stderr and current_version(sample_index) == before


def test_an_ingest_that_fails_before_writing_leaves_no_new_index_directory(tmp_path: Path, tiny_model_dir) -> None:
    index = tmp_path / "new-index"
    assert main(["ingest", str(tmp_path / "nope.md"), "--index", str(index), "--model", str(tiny_model_dir)]) != 0
    assert not index.exists()


def test_an_embedding_cache_keeps_the_index_domain(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Through ``--embed-cache`` the manifest still records the query instruction (and so the domain that
    query synonyms and turn weights follow); it used to record ``null``."""
    from retrieval.prompts import INSTRUCTIONS

    index = tmp_path / "index"
    argv = ["ingest", str(SAMPLE_STATUTES / "医师法.md"), "--index", str(index), "--model", str(tiny_model_dir)]
    assert main([*argv, "--embed-cache", str(tmp_path / "cache.sqlite"), "--domain", "medical", "--quiet"]) == 0
    version = (index / "CURRENT").read_text().strip()
    manifest = json.loads((index / version / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["instruction"] == INSTRUCTIONS["medical"] == manifest["embedder"]["instruction"]


def test_optimize_merges_small_segments_and_then_has_nothing_to_do(tmp_path: Path, capsys) -> None:
    from retrieval.index import Index, read_manifest
    from tests.retrieval.test_segments import _history

    index = tmp_path / "index"
    _history(index, seed=5, steps=30, merge=None)
    before = len(read_manifest(index)["segments"])
    chunks = Index(index).docs.count()
    assert before >= 8
    assert main(["optimize", "--index", str(index)]) == EXIT_OK
    after = len(read_manifest(index)["segments"])
    assert after < before and f"merged {before} segments into {after}" in capsys.readouterr().err
    assert Index(index).docs.count() == chunks
    assert main(["optimize", "--index", str(index)]) == EXIT_OK
    assert f"nothing to merge; the index keeps its {after} segments" in capsys.readouterr().err


def test_a_fault_keeps_its_traceback_and_exits_1_while_a_user_error_is_one_line(tmp_path: Path, capsys) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    assert main(["info", "--index", str(tmp_path / "nowhere")]) == 2  # the user can fix it: a message
    err = capsys.readouterr().err
    assert "no zhrag index at" in err and "Traceback" not in err
    script = (
        "import sys, app.cli as cli\n"
        "def broken(args):\n"
        "    raise ValueError('a bug, not bad input')\n"
        "cli.COMMANDS['info'] = broken\n"
        "sys.exit(cli.main(['info']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" in done.stderr and "a bug, not bad input" in done.stderr
