from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ingest.pipeline import ingest
from retrieval.index import Index, IndexMismatchError
from tests.conftest import SAMPLE_STATUTES


def test_ingest_summary_and_stable_ids(tmp_path: Path, tiny_embedder, analyzer) -> None:
    src = tmp_path / "src"
    shutil.copytree(SAMPLE_STATUTES / "民法典", src)
    first = ingest([src], tmp_path / "a", tiny_embedder, analyzer, progress=False)
    assert first.documents == first.documents_indexed == 2 and first.chunks == first.total_chunks > 100
    assert first.tokens > first.chunks and first.seconds > 0 and first.chunkers == {"statute": 2}
    again = ingest([src], tmp_path / "b", tiny_embedder, analyzer, progress=False)
    ids_a = sorted(c.id for c in Index(tmp_path / "a").docs.get(range(first.chunks)).values())
    ids_b = sorted(c.id for c in Index(tmp_path / "b").docs.get(range(again.chunks)).values())
    assert ids_a == ids_b


def test_reingest_is_incremental(tmp_path: Path, tiny_embedder, analyzer) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(SAMPLE_STATUTES / "医师法.md", src / "医师法.md")
    index = tmp_path / "index"
    first = ingest([src], index, tiny_embedder, analyzer, progress=False)
    version = first.version
    unchanged = ingest([src], index, tiny_embedder, analyzer, progress=False)
    assert unchanged.documents_unchanged == 1 and unchanged.chunks == 0 and unchanged.version == version
    path = src / "医师法.md"
    path.write_text(path.read_text(encoding="utf-8") + "\n第六十八条 本条为测试新增。\n", encoding="utf-8")
    changed = ingest([src], index, tiny_embedder, analyzer, progress=False)
    assert changed.documents_indexed == 1 and changed.total_chunks == first.total_chunks + 1
    assert changed.version != version
    articles = [c.metadata["article"] for c in Index(index).docs.document_chunks("医师法.md")]
    assert articles.count("第六十七条") == 1 and articles[-1] == "第六十八条"


def test_bad_files_are_skipped_not_fatal(tmp_path: Path, tiny_embedder, analyzer) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(SAMPLE_STATUTES / "医师法.md", src / "ok.md")
    (src / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    (src / "bad.jsonl").write_text("{oops\n", encoding="utf-8")
    (src / "empty.txt").write_text("   \n", encoding="utf-8")
    summary = ingest([src, tmp_path / "missing.md"], tmp_path / "index", tiny_embedder, analyzer, progress=False)
    reasons = {Path(s["path"]).name: s["reason"] for s in summary.skipped}
    assert set(reasons) == {"broken.pdf", "bad.jsonl", "empty.txt", "missing.md"}
    assert "line" not in reasons["missing.md"] and "bad.jsonl:1" in reasons["bad.jsonl"]
    assert summary.documents_indexed == 1 and summary.total_chunks > 60


def test_crash_during_embedding_keeps_serving_index(tmp_path: Path, tiny_embedder, analyzer, monkeypatch) -> None:
    index = tmp_path / "index"
    ingest([SAMPLE_STATUTES / "医师法.md"], index, tiny_embedder, analyzer, progress=False)
    before = (index / "CURRENT").read_text()

    def boom(batch):
        raise RuntimeError("GPU fell off")

    monkeypatch.setattr(tiny_embedder, "embed_token_ids", boom)
    with pytest.raises(RuntimeError, match="GPU"):
        ingest([SAMPLE_STATUTES / "药品管理法.md"], index, tiny_embedder, analyzer, progress=False)
    assert (index / "CURRENT").read_text() == before
    assert Index(index).docs.count_documents() == 1
    assert not list(index.glob(".staging-*"))


def test_jsonl_corpus_and_model_mismatch(
    tmp_path: Path, five_docs_jsonl: Path, tiny_embedder, tiny_model_dir, analyzer
) -> None:
    from retrieval.embedders.sentence_transformers import SentenceTransformerEmbedder

    summary = ingest([five_docs_jsonl], tmp_path / "i", tiny_embedder, analyzer, progress=False)
    assert summary.total_documents == 5 and summary.chunkers == {"generic": 5}
    chunk = Index(tmp_path / "i").docs.document_chunks("d2")[0]
    assert chunk.metadata["law"] == "民法典" and chunk.embed_text.startswith("医疗损害\n")
    smaller = SentenceTransformerEmbedder(str(tiny_model_dir), dim=32, device="cpu")
    with pytest.raises(IndexMismatchError):
        ingest([SAMPLE_STATUTES / "医师法.md"], tmp_path / "i", smaller, analyzer, progress=False)


def test_prune_removes_vanished_documents_but_keeps_broken_ones(tmp_path: Path, tiny_embedder, analyzer) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("医师法.md", "药品管理法.md", "传染病防治法.md"):
        shutil.copy(SAMPLE_STATUTES / name, src / name)
    index = tmp_path / "index"
    ingest([src], index, tiny_embedder, analyzer, progress=False)
    (src / "药品管理法.md").unlink()
    (src / "传染病防治法.md").write_bytes(b"\xff\xfe\x00\xd8 broken")  # now unreadable
    kept = ingest([src], index, tiny_embedder, analyzer, progress=False)
    assert kept.documents_removed == 0 and Index(index).docs.count_documents() == 3
    summary = ingest([src], index, tiny_embedder, analyzer, progress=False, prune=True)
    assert summary.documents_removed == 1
    assert [Path(s["path"]).name for s in summary.skipped] == ["传染病防治法.md"]
    assert Index(index).docs.document_chunks("传染病防治法.md")[0].metadata["law"] == "中华人民共和国传染病防治法"
    assert Index(index).docs.document_ids() == ["传染病防治法.md", "医师法.md"]


def test_an_embedding_cache_keeps_chunk_sizes_in_model_tokens(tmp_path: Path, tiny_embedder, analyzer) -> None:
    """Behind the SQLite cache the texts go through the cache, but chunks are still measured in tokens."""
    from ingest.chunkers import ChunkSettings
    from retrieval.embedders.cache import CachedEmbedder

    small = ChunkSettings(chunk_size=48, chunk_overlap=0)
    src = SAMPLE_STATUTES / "医师法.md"
    plain = ingest([src], tmp_path / "a", tiny_embedder, analyzer, small, progress=False)
    cached = CachedEmbedder(tiny_embedder, tmp_path / "cache.sqlite")
    through = ingest([src], tmp_path / "b", cached, analyzer, small, progress=False)
    texts = [[c.text for c in Index(tmp_path / d).docs.document_chunks("医师法.md")] for d in "ab"]
    assert texts[0] == texts[1] and through.chunks == plain.chunks > 100 and through.tokens == plain.tokens
    assert through.padding_ratio == 0.0 and plain.padding_ratio > 0  # the cached run embeds texts, not ids


def test_progress_counts_embedded_chunks_inside_one_file(
    tmp_path: Path, tiny_embedder, analyzer, capsys: pytest.CaptureFixture[str]
) -> None:
    # One JSONL corpus is one file: the bar must move with the chunks, not sit at "1/1 file" until the end.
    corpus = tmp_path / "corpus.jsonl"
    lines = [
        f'{{"id": "q{i}", "text": "第{i}号问答：高血压患者长期服用降压药，头晕头疼时应当及时复诊，调整用药方案。"}}'
        for i in range(40)
    ]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = ingest([corpus], tmp_path / "index", tiny_embedder, analyzer, progress=True)
    err = capsys.readouterr().err
    assert summary.chunks >= 40
    assert f"{summary.chunks}/{summary.chunks}" in err and "chunk" in err


def test_the_domain_is_recorded_and_kept_by_updates(tmp_path: Path, tiny_embedder, analyzer) -> None:
    from retrieval.index import read_manifest

    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("高血压患者应当低盐饮食，规律服用降压药。", encoding="utf-8")
    second.write_text("糖尿病患者要控制主食的量，坚持运动。", encoding="utf-8")
    index = tmp_path / "index"
    ingest([first], index, tiny_embedder, analyzer, progress=False, domain="medical")
    assert read_manifest(index)["domain"] == "medical"
    ingest([second], index, tiny_embedder, analyzer, progress=False)  # e.g. POST /documents: no domain given
    assert read_manifest(index)["domain"] == "medical" and Index(index).docs.count() == 2


def test_the_run_record_counts_each_outcome_of_real_files(tmp_path: Path, analyzer) -> None:
    """The record alone, on files prepared by the real stages: a statute to embed, the same statute again
    under its id (a duplicate), an unchanged one, an unreadable file and a JSONL file with a bad record."""
    from ingest.chunkers import ChunkSettings
    from ingest.pipeline import IngestSummary, RunRecord
    from ingest.stages import FileTask, StageContext, prepare

    statute = SAMPLE_STATUTES / "医师法.md"
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.7 not really")
    records = tmp_path / "qa.jsonl"
    records.write_text('{"id": "q1", "text": "传染病疫情应当及时报告。"}\n{"id": "q2"}\n', encoding="utf-8")
    fresh = StageContext(ChunkSettings(), analyzer, None)
    first = prepare(FileTask(statute, statute.name), fresh)
    known = StageContext(ChunkSettings(), analyzer, None, known={statute.name: first.docs[0].digest})
    summary, skipped = IngestSummary(index="i", model="m", workers=1), []
    record = RunRecord(summary, on_skip=lambda path, reason: skipped.append(path))
    taken = record.take(first, lambda d: 7)
    assert [d.doc.id for d in taken] == [statute.name] and summary.tokens == 7
    assert record.take(prepare(FileTask(statute, statute.name), known), lambda d: 7) == []  # unchanged
    assert summary.documents_unchanged == 1 and "duplicate document id" in summary.skipped[0]["reason"]
    assert record.take(prepare(FileTask(broken, broken.name), fresh), lambda d: 7) == []
    assert broken in record.failed and skipped[-1] == str(broken)
    assert [d.doc.id for d in record.take(prepare(FileTask(records, records.name), fresh), lambda d: 1)] == ["q1"]
    assert len(summary.skipped) == 3 and summary.documents == 3  # the duplicate, the PDF, record q2
    record.close(indexed={statute.name, "q1"})
    assert summary.documents_indexed == 2 and sum(summary.chunkers.values()) == 2


def test_prune_and_the_publish_decision_on_their_own(tmp_path: Path) -> None:
    from ingest.pipeline import prune_unseen, publish_or_keep
    from retrieval.index import IndexWriter, current_version
    from tests.retrieval.test_index import EMBEDDER, _chunks, _vectors

    def add(writer: IndexWriter, doc_id: str) -> None:
        writer.add_document(doc_id, "src", f"h-{doc_id}", _chunks(doc_id, ["一 二"]), _vectors(1), [["一", "二"]])

    index = tmp_path / "index"
    with IndexWriter(index, EMBEDDER) as writer:
        for doc_id in ("a.md", "b.md", "book.xlsx#Sheet1", "book.xlsx#Sheet2"):
            add(writer, doc_id)
        first = publish_or_keep(writer)
    assert current_version(index) == first
    with IndexWriter(index, EMBEDDER) as writer:
        assert publish_or_keep(writer) == first  # nothing changed: no identical copy published
    assert current_version(index) == first
    with IndexWriter(index, EMBEDDER) as writer:  # the run saw a.md; book.xlsx failed to load this time
        assert prune_unseen(writer, seen={"a.md"}, kept_bases={"book.xlsx"}) == 1
        second = publish_or_keep(writer)
    assert second != first and current_version(index) == second
    from retrieval.index import LiveDocs

    assert LiveDocs(index).docs.document_ids() == ["a.md", "book.xlsx#Sheet1", "book.xlsx#Sheet2"]
