"""Milvus (Lite) as an index's vector store: configuration honoured, one generation per published version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.cli import milvus_collection
from ingest.pipeline import ingest
from retrieval.bm25 import BM25Index
from retrieval.index import Index
from retrieval.searcher import Searcher, SearchOptions
from tests.conftest import SAMPLE_STATUTES

pymilvus = pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")
from retrieval.stores.milvus_bm25 import MilvusBM25  # noqa: E402 - needs pymilvus

QUERIES = ["医师在执业活动中履行哪些义务", "药品上市许可持有人的责任", "传染病疫情的报告", "患者的隐私保护"]


def _store(uri: Path, index: Path, bm25: bool = True, kind: str = "auto") -> dict[str, object]:
    return {"backend": "milvus", "uri": str(uri), "collection": milvus_collection(index), "kind": kind, "bm25": bm25}


def _owned(view: Index) -> list[str]:
    """The collections a version reads: its vector generation and its BM25 collection."""
    return [view.store.collection, view.store.bm25_collection]


def _collections(uri: Path) -> list[str]:
    client = pymilvus.MilvusClient(str(uri))
    try:
        return sorted(client.list_collections())
    finally:
        client.close()


def _top(index: Path, embedder, analyzer, mode: str = "dense") -> list[list[str]]:
    searcher = Searcher(Index(index), embedder, analyzer)
    return [[h.chunk.id for h in searcher.search(q, SearchOptions(top_k=5, mode=mode)).hits] for q in QUERIES]


def test_milvus_index_searches_like_faiss_and_two_indexes_are_independent(tmp_path: Path, tiny_embedder, analyzer):
    uri = tmp_path / "shared.db"  # one Milvus for both indexes
    laws, statutes = tmp_path / "laws", tmp_path / "civil"
    ingest([SAMPLE_STATUTES], laws, tiny_embedder, analyzer, store=_store(uri, laws, kind="flat"), progress=False)
    ingest([SAMPLE_STATUTES / "民法典"], statutes, tiny_embedder, analyzer, store=_store(uri, statutes), progress=False)
    ingest([SAMPLE_STATUTES], tmp_path / "faiss", tiny_embedder, analyzer, progress=False)
    manifest = Index(laws).manifest
    assert manifest["store"] == _store(uri, laws, kind="flat")
    assert "token" not in manifest["store"]
    assert _top(laws, tiny_embedder, analyzer) == _top(tmp_path / "faiss", tiny_embedder, analyzer)  # exact both
    civil = Searcher(Index(statutes), tiny_embedder, analyzer)
    docs = {h.chunk.doc_id for q in QUERIES for h in civil.search(q, SearchOptions(top_k=5, mode="dense")).hits}
    assert docs <= {"人格权编.md", "侵权责任编.md"}  # the other index's documents never leak in
    assert milvus_collection(laws) != milvus_collection(statutes)
    assert _collections(uri) == sorted(_owned(Index(laws)) + _owned(Index(statutes)))  # one live generation each
    assert not (Index(laws).version_dir / "bm25").exists()  # the BM25 leg lives in Milvus


def test_each_version_reads_its_own_generation_and_failures_leave_no_trace(
    tmp_path: Path, tiny_embedder, analyzer, monkeypatch
) -> None:
    uri, index = tmp_path / "milvus.db", tmp_path / "index"
    store = _store(uri, index)
    ingest([SAMPLE_STATUTES / "医师法.md"], index, tiny_embedder, analyzer, store=store, progress=False)
    first = Index(index)
    before = _top(index, tiny_embedder, analyzer)
    ingest([SAMPLE_STATUTES / "药品管理法.md"], index, tiny_embedder, analyzer, store=store, progress=False)
    second = Index(index)
    assert first.store.collection != second.store.collection  # a new generation, vectors copied over
    assert first.store.count() == first.docs.count() and second.store.count() == second.docs.count()
    assert first.store.count() < second.store.count()
    # The previous version still answers from its own generation (readers of it are unaffected).
    searcher = Searcher(first, tiny_embedder, analyzer)
    assert [[h.chunk.id for h in searcher.search(q, SearchOptions(top_k=5, mode="dense")).hits] for q in QUERIES] == (
        before
    )

    def boom(batch):
        raise RuntimeError("GPU fell off")

    live = (index / "CURRENT").read_text()
    with monkeypatch.context() as patch:
        patch.setattr(tiny_embedder, "embed_token_ids", boom)
        with pytest.raises(RuntimeError, match="GPU"):
            ingest([SAMPLE_STATUTES / "传染病防治法.md"], index, tiny_embedder, analyzer, store=store, progress=False)
    assert (index / "CURRENT").read_text() == live
    assert sorted(_owned(first) + _owned(second)) == _collections(uri)  # nothing left behind
    ingest([SAMPLE_STATUTES / "传染病防治法.md"], index, tiny_embedder, analyzer, store=store, progress=False)
    third = Index(index)
    # Two versions are kept; the first one's generation went with it.
    assert _collections(uri) == sorted(_owned(second) + _owned(third))
    assert third.store.count() == third.docs.count()


MIGRATE_QUERIES = [
    "医师在执业活动中履行哪些义务",
    "药品上市许可持有人的责任",
    "传染病疫情的报告时限",
    "患者的隐私保护",
    "医疗损害责任的承担",
    "假药和劣药如何认定",
    "医师资格考试的条件",
    "基本医疗卫生服务的内容",
    "人格权受到侵害时的请求权",
    "网络侵权的通知规则",
    "高度危险作业致人损害",
    "饲养动物损害责任",
    "突发公共卫生事件的应急处置",
    "药品广告的审查",
    "医疗机构的执业登记",
    "个人信息的处理规则",
    "名誉权与新闻报道",
    "紧急情况下的医疗措施",
    "疫苗接种的异常反应",
    "产品缺陷造成损害的责任",
]


def test_migrate_to_milvus_and_back_keeps_the_results(sample_index: Path, tmp_path: Path, tiny_embedder, analyzer):
    """20 queries: dense and BM25 rankings identical after moving the vectors (no re-embedding); hybrid's
    top 5 identical (deeper in its 300-candidate dense pool, near-tied cosines may swap by float rounding)."""
    import shutil

    from app.cli import main

    index = tmp_path / "index"
    shutil.copytree(sample_index, index)

    def results(mode: str) -> list[list[str]]:
        view = Index(index)
        searcher = Searcher(view, tiny_embedder, analyzer)
        options = SearchOptions(top_k=10, mode=mode)
        found = [[h.chunk.id for h in searcher.search(q, options).hits] for q in MIGRATE_QUERIES]
        view.close()
        return found

    def same(after: dict[str, list[list[str]]], before: dict[str, list[list[str]]]) -> None:
        assert after["dense"] == before["dense"] and after["bm25"] == before["bm25"]
        assert [r[:5] for r in after["hybrid"]] == [r[:5] for r in before["hybrid"]]

    before = {mode: results(mode) for mode in ("dense", "hybrid", "bm25")}
    uri = tmp_path / "milvus.db"
    assert main(["migrate", "--index", str(index), "--to", "milvus", "--milvus-uri", str(uri)]) == 0
    view = Index(index)
    assert view.manifest["store"]["backend"] == "milvus" and view.store.count() == view.docs.count()
    assert isinstance(view.bm25, MilvusBM25) and view.bm25.count() == view.docs.count()
    view.close()
    same({mode: results(mode) for mode in before}, before)
    assert main(["migrate", "--index", str(index), "--to", "faiss", "--index-type", "flat"]) == 0
    assert Index(index).manifest["store"]["backend"] == "faiss"
    assert Index(index).bm25.location == "local"  # the BM25 leg is back in the index directory
    same({mode: results(mode) for mode in before}, before)


def test_migrating_off_milvus_lite_removes_its_file_once_no_version_uses_it(
    sample_index: Path, tmp_path: Path, capsys
) -> None:
    import shutil

    from app.cli import main

    index = tmp_path / "index"
    shutil.copytree(sample_index, index)
    assert main(["migrate", "--index", str(index), "--to", "milvus"]) == 0  # the default INDEX/milvus.db
    lite = index / "milvus.db"
    assert lite.exists()
    capsys.readouterr()
    assert main(["migrate", "--index", str(index), "--to", "faiss", "--index-type", "flat"]) == 0
    err = capsys.readouterr().err
    assert lite.exists() and "the next change to the index removes both" in err  # the rollback version uses it
    assert main(["delete", "医师法.md", "--index", str(index)]) == 0  # the Milvus version is pruned now
    assert not lite.exists() and not (index / ".milvus.db.lock").exists()
    assert {p.name for p in index.iterdir() if not p.name.startswith("v-")} == {"CURRENT", ".writer.lock", "segments"}


def test_bm25_leg_in_milvus_scores_like_the_local_leg(tmp_path: Path, tiny_embedder, analyzer, monkeypatch) -> None:
    """The same statutes indexed with the BM25 leg in Milvus and in a local file: the same chunks with the
    same scores (float32 rounding aside), for plain queries, weighted multi-turn queries and id filters."""
    uri = tmp_path / "m.db"
    engine, local = tmp_path / "engine", tmp_path / "local"
    ingest([SAMPLE_STATUTES], engine, tiny_embedder, analyzer, store=_store(uri, engine), progress=False)
    ingest([SAMPLE_STATUTES], local, tiny_embedder, analyzer, store=_store(uri, local, bm25=False), progress=False)
    remote, here = Index(engine), Index(local)
    assert isinstance(remote.bm25, MilvusBM25) and isinstance(here.bm25, BM25Index)
    assert (local / here.version / "bm25").is_dir() and here.store.bm25_collection is None
    stats = remote.store.bm25_stats  # recorded in the version's milvus.json
    assert remote.bm25.count() == remote.docs.count() == here.bm25.count() == stats["chunks"]
    assert stats["terms"] == len(here.bm25.vocabulary()) and stats["hash_collisions"] < 5
    # Same chunk ids in both (one ingest order), so row ids line up.
    first = range(20)
    assert [remote.docs.get(first)[r].id for r in first] == [here.docs.get(first)[r].id for r in first]
    for query in MIGRATE_QUERIES:
        tokens = analyzer.query_tokens(query)
        s1, r1 = remote.bm25.search(tokens, 10)
        s2, r2 = here.bm25.search(tokens, 10)
        assert len(r2) == 10 and r1.tolist() == r2.tolist()
        np.testing.assert_allclose(s1, s2, rtol=1e-5)
    weights = {t: 1.0 for t in analyzer.query_tokens("医师的义务")} | {
        t: 0.5 for t in analyzer.query_tokens("患者隐私")
    }
    allowed = np.arange(0, remote.docs.count(), 3)
    s1, r1 = remote.bm25.search_weighted(weights, 8, allowed)
    s2, r2 = here.bm25.search_weighted(weights, 8, allowed)
    assert len(r2) == 8 and r1.tolist() == r2.tolist() and set(r1.tolist()) <= set(allowed.tolist())
    np.testing.assert_allclose(s1, s2, rtol=1e-5)
    assert remote.bm25.search(["从未出现过的词"], 5)[1].size == 0
    import retrieval.stores.milvus_search as milvus

    for wide in (50, 10):  # a filter longer than one expression: one deeper search, or parts of 10 ids
        monkeypatch.setattr(milvus, "_MAX_FILTER_IDS", wide)
        monkeypatch.setattr(milvus, "_MAX_TOPK", 16384 if wide == 50 else 8)
        s1, r1 = remote.bm25.search_weighted(weights, 8, allowed)
        assert r1.tolist() == r2.tolist()
        np.testing.assert_allclose(s1, s2, rtol=1e-5)


def test_cli_milvus_options_are_recorded_and_checked(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    """`--index-type flat --no-milvus-bm25` reach the manifest; an index type Milvus lacks is refused by name."""
    from app.cli import main

    index, uri = tmp_path / "index", tmp_path / "m.db"
    common = ["--index", str(index), "--model", str(tiny_model_dir), "--store", "milvus", "--milvus-uri", str(uri)]
    doc = str(SAMPLE_STATUTES / "医师法.md")
    assert main(["ingest", doc, *common, "--index-type", "ivfpq", "--quiet"]) != 0
    assert "ivfpq" in capsys.readouterr().err and not index.exists()
    assert main(["ingest", doc, *common, "--index-type", "flat", "--no-milvus-bm25", "--quiet"]) == 0
    view = Index(index)
    assert view.manifest["store"]["kind"] == "flat" and view.manifest["store"]["bm25"] is False
    assert isinstance(view.bm25, BM25Index) and view.store.bm25_collection is None
    assert _collections(uri) == [view.store.collection]  # no BM25 collection
    view.close()


def test_the_configured_token_reaches_milvus_on_every_path_and_is_never_written(
    tmp_path: Path, tiny_embedder, analyzer, monkeypatch
) -> None:
    """``ZHRAG_MILVUS_TOKEN`` from the settings (a ``.env`` file, not only the process environment) is what
    every connection uses: serving, adding, deleting and pruning; the index never records it."""
    import retrieval.stores.milvus as milvus
    from app.services import build_services
    from app.settings import Settings
    from ingest.pipeline import IngestOptions, remove_documents

    monkeypatch.delenv("ZHRAG_MILVUS_TOKEN", raising=False)
    tokens: list[str] = []

    class Recording(pymilvus.MilvusClient):  # the third-party client, recording what it is given
        def __init__(self, *args, **kwargs) -> None:
            tokens.append(kwargs.get("token", ""))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(milvus, "MilvusClient", Recording)
    index, secret = tmp_path / "index", "root:s3cret"
    options = IngestOptions(connection={"token": secret})
    store = _store(tmp_path / "m.db", index)
    ingest(
        [SAMPLE_STATUTES / "医师法.md"], index, tiny_embedder, analyzer, store=store, progress=False, options=options
    )
    ingest([SAMPLE_STATUTES / "药品管理法.md"], index, tiny_embedder, analyzer, progress=False, options=options)
    remove_documents(index, ["药品管理法.md"], {"token": secret})  # prunes the oldest version: a discard
    services = build_services(Settings(index=index, milvus_token=secret), load_model=False)
    services.close()
    assert tokens and set(tokens) == {secret}
    assert secret not in "".join(p.read_text(errors="ignore") for p in index.rglob("*.json"))
