"""Milvus (Lite) as an index's vector store: configuration honoured, one collection per segment, shared by
the versions that list it; BM25 stays local with exact global statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.cli import milvus_collection
from ingest.pipeline import ingest
from retrieval.index import Index, read_manifest
from retrieval.searcher import Searcher, SearchOptions
from tests.conftest import SAMPLE_STATUTES

pymilvus = pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

QUERIES = ["医师在执业活动中履行哪些义务", "药品上市许可持有人的责任", "传染病疫情的报告", "患者的隐私保护"]


def _store(uri: Path, index: Path, kind: str = "auto") -> dict[str, object]:
    return {"backend": "milvus", "uri": str(uri), "collection": milvus_collection(index), "kind": kind}


def _owned(index: Path, version: str | None = None) -> list[str]:
    """The collections a version's segments keep their vectors in (the live version by default)."""
    name = version or (index / "CURRENT").read_text().strip()
    manifest = json.loads((index / name / "manifest.json").read_text())
    files = [index / "segments" / s["name"] / "milvus.json" for s in manifest["segments"]]
    return sorted(json.loads(f.read_text())["collection"] for f in files)


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
    for mode in ("dense", "bm25"):
        assert _top(laws, tiny_embedder, analyzer, mode) == _top(tmp_path / "faiss", tiny_embedder, analyzer, mode)
    civil = Searcher(Index(statutes), tiny_embedder, analyzer)
    docs = {h.chunk.doc_id for q in QUERIES for h in civil.search(q, SearchOptions(top_k=5, mode="dense")).hits}
    assert docs <= {"人格权编.md", "侵权责任编.md"}  # the other index's documents never leak in
    assert milvus_collection(laws) != milvus_collection(statutes)
    assert _collections(uri) == sorted(_owned(laws) + _owned(statutes))  # one collection per segment


def test_a_write_adds_one_collection_shares_the_others_and_failures_leave_no_trace(
    tmp_path: Path, tiny_embedder, analyzer, monkeypatch
) -> None:
    uri, index = tmp_path / "milvus.db", tmp_path / "index"
    store = _store(uri, index)
    ingest([SAMPLE_STATUTES / "医师法.md"], index, tiny_embedder, analyzer, store=store, progress=False)
    first_version = (index / "CURRENT").read_text().strip()
    first = Index(index)
    before = _top(index, tiny_embedder, analyzer)
    ingest([SAMPLE_STATUTES / "药品管理法.md"], index, tiny_embedder, analyzer, store=store, progress=False)
    second = Index(index)
    (shared,) = _owned(index, first_version)
    assert shared in _owned(index) and len(_owned(index)) == 2  # the first segment's collection, not a copy
    assert first.store.count() == first.docs.count() and second.store.count() == second.docs.count()
    # The previous version still answers as before (its readers are unaffected).
    searcher = Searcher(first, tiny_embedder, analyzer)
    assert [[h.chunk.id for h in searcher.search(q, SearchOptions(top_k=5, mode="dense")).hits] for q in QUERIES] == (
        before
    )

    def boom(batch):
        raise RuntimeError("GPU fell off")

    live, owned = (index / "CURRENT").read_text(), _collections(uri)
    with monkeypatch.context() as patch:
        patch.setattr(tiny_embedder, "embed_token_ids", boom)
        with pytest.raises(RuntimeError, match="GPU"):
            ingest([SAMPLE_STATUTES / "传染病防治法.md"], index, tiny_embedder, analyzer, store=store, progress=False)
    assert (index / "CURRENT").read_text() == live and _collections(uri) == owned  # nothing left behind
    ingest([SAMPLE_STATUTES / "传染病防治法.md"], index, tiny_embedder, analyzer, progress=False)
    from ingest.pipeline import remove_documents

    remove_documents(index, ["医师法.md"])  # its segment holds nothing live now: dropped with its collection
    listed = set(_owned(index)) | set(_owned(index, read_manifest(index)["previous_version"]))
    assert set(_collections(uri)) == listed and shared not in _owned(index)
    third = Index(index)
    assert third.store.count() == third.docs.count() == third.bm25.count()


def test_a_dead_writers_collection_is_dropped_by_the_next_writer(tmp_path: Path, tiny_embedder, analyzer) -> None:
    """A writer killed after creating its segment's collection, before anything names it: the next one
    sweeps it away."""
    from retrieval.stores import create_store

    uri, index = tmp_path / "milvus.db", tmp_path / "index"
    store = _store(uri, index)
    ingest([SAMPLE_STATUTES / "医师法.md"], index, tiny_embedder, analyzer, store=store, progress=False)
    conf = {k: v for k, v in store.items() if k != "backend"}
    orphan = create_store("milvus", Index(index).dim, **conf)  # what a dead writer left
    orphan.add(np.arange(3), np.eye(3, Index(index).dim, dtype=np.float32))
    orphan.close()
    assert len(_collections(uri)) == 2
    ingest([SAMPLE_STATUTES / "药品管理法.md"], index, tiny_embedder, analyzer, progress=False)
    assert _collections(uri) == sorted(
        set(_owned(index)) | set(_owned(index, read_manifest(index)["previous_version"]))
    )


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
    assert view.bm25.location == "local" and view.bm25.count() == view.docs.count()
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


def test_an_older_milvus_index_with_bm25_in_milvus_is_read_then_upgraded(tmp_path: Path, tiny_embedder, analyzer):
    """A version of the whole-version format (its generation in Milvus, BM25 kept in Milvus too, no BM25
    file) still searches — BM25 counted again from the stored terms — and becomes segments on its first
    write; its generation is dropped once no kept version uses it."""
    from retrieval.docstore import DocStore
    from retrieval.stores import create_store

    uri, index, fresh = tmp_path / "milvus.db", tmp_path / "index", tmp_path / "fresh"
    ingest([SAMPLE_STATUTES / "医师法.md"], fresh, tiny_embedder, analyzer, progress=False)
    source = Index(fresh)
    conf = _store(uri, index)
    old = create_store("milvus", source.dim, **{k: v for k, v in conf.items() if k != "backend"})
    for ids, vectors in source.store.items():
        old.add(ids, vectors)
    version = index / "v-20260101T000000-aaaaaa"
    old.save(version)
    old.close()
    rows = DocStore(version / "chunks.sqlite")
    rows.copy_live([(s.path / "chunks.sqlite", np.zeros(0, np.int64), []) for s in source.segments])
    rows.commit()
    rows.close()
    manifest = {**source.manifest, "format": 1, "store": {**conf, "bm25": True}}
    for key in ("segments", "next_rid"):
        manifest.pop(key)
    (version / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False))
    (index / "CURRENT").write_text(version.name + "\n")
    generation = json.loads((version / "milvus.json").read_text())["collection"]

    for mode in ("dense", "bm25"):  # read as it is
        assert _top(index, tiny_embedder, analyzer, mode) == _top(fresh, tiny_embedder, analyzer, mode)
    ingest([SAMPLE_STATUTES / "药品管理法.md"], index, tiny_embedder, analyzer, progress=False)
    ingest([SAMPLE_STATUTES / "药品管理法.md"], fresh, tiny_embedder, analyzer, progress=False)
    assert read_manifest(index)["format"] == 2 and "bm25" not in read_manifest(index)["store"]
    for mode in ("dense", "bm25"):
        assert _top(index, tiny_embedder, analyzer, mode) == _top(fresh, tiny_embedder, analyzer, mode)
    assert generation in _collections(uri)  # the rollback version still reads it
    ingest([SAMPLE_STATUTES / "传染病防治法.md"], index, tiny_embedder, analyzer, progress=False)
    assert generation not in _collections(uri) and not version.exists()


def test_cli_milvus_options_are_recorded_and_checked(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    """`--index-type flat` reaches the manifest; an index type Milvus lacks is refused by name."""
    from app.cli import main

    index, uri = tmp_path / "index", tmp_path / "m.db"
    common = ["--index", str(index), "--model", str(tiny_model_dir), "--store", "milvus", "--milvus-uri", str(uri)]
    doc = str(SAMPLE_STATUTES / "医师法.md")
    assert main(["ingest", doc, *common, "--index-type", "ivfpq", "--quiet"]) != 0
    assert "ivfpq" in capsys.readouterr().err and not index.exists()
    assert main(["ingest", doc, *common, "--index-type", "flat", "--quiet"]) == 0
    view = Index(index)
    assert view.manifest["store"]["kind"] == "flat" and view.bm25.location == "local"
    assert _collections(uri) == _owned(index)  # the segment's vectors, nothing else
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
