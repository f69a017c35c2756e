"""Segmented index versions: any history of adds, replaces, deletes and merges ranks like a fresh build of
the documents it leaves, writes share unchanged segments, and older indexes upgrade on their first write."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from retrieval.index import Index, IndexWriter, merge_segments, read_manifest
from retrieval.merge_policy import MergePolicy, plan_merge
from retrieval.metadata_filter import MetadataFilter
from retrieval.types import Chunk

DIM = 16
EMBEDDER = {"backend": "test", "model": "m", "dim": DIM}
WORDS = "医师 患者 隐私 义务 权利 药品 许可 疫情 报告 隔离 合同 违约 赔偿 责任 行政 处罚 罚款 执业 证书 监护".split()
FORMAT1 = Path(__file__).parent / "data" / "format1"
EAGER = MergePolicy(floor=1, factor=2, per_tier=3)  # merges after a few writes, so histories exercise them


def _document(doc_id: str, revision: int) -> dict:
    """A document's chunks (texts and vectors), a pure function of (doc_id, revision)."""
    local = random.Random(f"{doc_id}/{revision}")
    texts = [" ".join(local.choice(WORDS) for _ in range(local.randint(3, 12))) for _ in range(local.randint(1, 4))]
    vectors = np.random.default_rng(local.getrandbits(32)).normal(size=(len(texts), DIM))  # the same in every process
    return {"id": doc_id, "revision": revision, "texts": texts, "vectors": vectors.astype(np.float32)}


def _add(writer: IndexWriter, doc: dict) -> None:
    chunks = [
        Chunk(id=f"{doc['id']}#{i}", doc_id=doc["id"], text=t, embed_text=t, metadata={"group": doc["id"][-1]}, seq=i)
        for i, t in enumerate(doc["texts"])
    ]
    writer.add_document(
        doc["id"], "src", f"{doc['id']}@{doc['revision']}", chunks, doc["vectors"], [t.split() for t in doc["texts"]]
    )


def _history(root: Path, seed: int, steps: int, merge: MergePolicy | None) -> dict[str, dict]:
    """Apply a random history of one-document writes (and merges); the documents it leaves."""
    rng = random.Random(seed)
    docs: dict[str, dict] = {}
    for step in range(steps):
        op = rng.random()
        with IndexWriter(root, EMBEDDER) as writer:
            if op < 0.5 or len(docs) < 2:
                doc = _document(f"d{step:03d}-{rng.randint(0, 9)}", 0)
                _add(writer, doc)
                docs[doc["id"]] = doc
            elif op < 0.8:
                old = docs[rng.choice(sorted(docs))]
                doc = _document(old["id"], old["revision"] + 1)
                _add(writer, doc)
                docs[doc["id"]] = doc
            else:
                writer.delete_document(docs.pop(rng.choice(sorted(docs)))["id"])
            writer.commit()
        if merge is not None and rng.random() < 0.3:
            merge_segments(root, merge)
    return docs


def _fresh(root: Path, docs: dict[str, dict]) -> None:
    with IndexWriter(root, EMBEDDER) as writer:
        for doc_id in sorted(docs):
            _add(writer, docs[doc_id])
        writer.commit()


def _bm25_groups(
    index: Index, query: list[str], allowed: np.ndarray | None = None
) -> list[tuple[float, frozenset[str]]]:
    """Every matching chunk (k covers them all), grouped by exact score: ties may order by row id."""
    scores, rids = index.bm25.search(query, 10_000, allowed)
    chunks = index.docs.get(rids)
    groups: dict[float, set[str]] = {}
    for score, rid in zip(scores.tolist(), rids.tolist(), strict=True):
        groups.setdefault(score, set()).add(chunks[rid].id)
    return [(s, frozenset(groups[s])) for s in sorted(groups, reverse=True)]


def _dense(index: Index, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[list[str]]:
    _, rids = index.store.search(queries, k, allowed)
    chunks = index.docs.get(int(r) for r in rids.ravel() if r >= 0)
    return [[chunks[int(r)].id for r in row if r >= 0] for row in rids]


def _assert_same_rankings(a: Index, b: Index, seed: int) -> None:
    rng = random.Random(seed)
    assert a.docs.count() == b.docs.count() == a.store.count() == a.bm25.count()
    assert a.docs.document_hashes() == b.docs.document_hashes()
    assert a.docs.list_documents(0, 1000) == b.docs.list_documents(0, 1000)
    group = MetadataFilter.from_mapping({"group": ["1", "3", "5"]})
    for _ in range(12):
        query = [rng.choice(WORDS) for _ in range(rng.randint(1, 5))]
        assert _bm25_groups(a, query) == _bm25_groups(b, query)
        assert _bm25_groups(a, query, a.docs.filter_rids(group)) == _bm25_groups(b, query, b.docs.filter_rids(group))
    queries = np.random.default_rng(seed).normal(size=(8, DIM)).astype(np.float32)
    for k in (1, 5, 40):
        assert _dense(a, queries, k) == _dense(b, queries, k)
        assert _dense(a, queries, k, a.docs.filter_rids(group)) == _dense(b, queries, k, b.docs.filter_rids(group))


@pytest.mark.parametrize(
    ("seed", "searched_alone"), [(1, False), (2, False), (3, False), (4, False), (5, True), (6, True)]
)
def test_any_history_of_writes_and_merges_ranks_like_a_fresh_build(
    tmp_path: Path, seed: int, searched_alone: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if searched_alone:  # every segment searched on its own, deletions excluded inside FAISS and in its postings
        monkeypatch.setattr("retrieval.segments.APPROXIMATE_FROM", 1)
    docs = _history(tmp_path / "history", seed, steps=40, merge=EAGER if seed % 2 else None)
    _fresh(tmp_path / "fresh", docs)
    history, fresh = Index(tmp_path / "history"), Index(tmp_path / "fresh")
    assert len(fresh.segments) == 1
    if seed % 2 == 0:
        assert len(history.segments) > 5  # unmerged: one segment per write that still holds a live document
    _assert_same_rankings(history, fresh, seed)
    # chunks of replaced and deleted documents are gone from every view
    texts = {c.id for c in history.docs.get(range(history.docs.next_rid())).values()}
    assert texts == {f"{d}#{i}" for d, doc in docs.items() for i in range(len(doc["texts"]))}


def test_a_write_shares_the_unchanged_segments_and_writes_only_its_own(tmp_path: Path) -> None:
    root = tmp_path / "index"
    with IndexWriter(root, EMBEDDER) as writer:
        for i in range(1000):
            _add(writer, _document(f"big{i:04d}", 0))
        first = writer.commit()
    (big,) = read_manifest(root)["segments"]
    big_dir = root / "segments" / big["name"]
    before = {p: p.stat().st_mtime_ns for p in big_dir.rglob("*")}
    with IndexWriter(root, EMBEDDER) as writer:
        _add(writer, _document("big0007", 1))  # a replace: one new segment, one deletions file
        second = writer.commit()
    manifest = read_manifest(root)
    assert [s["name"] for s in manifest["segments"]][0] == big["name"] and len(manifest["segments"]) == 2
    assert {p: p.stat().st_mtime_ns for p in before} == before  # the shared segment is untouched
    (deletes,) = big_dir.glob("del-*.npz")
    assert manifest["segments"][0]["deletes"] == deletes.name and manifest["segments"][0]["deleted_documents"] == 1
    small = root / "segments" / manifest["segments"][1]["name"]
    assert sum(p.stat().st_size for p in small.rglob("*") if p.is_file()) < 0.1 * sum(
        p.stat().st_size for p in big_dir.rglob("*") if p.is_file()
    )
    # the previous version still reads its own view: the replaced document's old chunks, no deletions
    old = json.loads((root / first / "manifest.json").read_text())
    assert old["segments"][0]["deletes"] is None and (root / second).is_dir()


def test_merging_bounds_the_segments_and_drops_what_no_version_lists(tmp_path: Path) -> None:
    root = tmp_path / "index"
    docs = _history(root, seed=11, steps=60, merge=None)
    assert len(Index(root).segments) > 20
    published = merge_segments(root, MergePolicy(floor=5, factor=4, per_tier=4))
    assert published and read_manifest(root)["merged_at"]
    merged = Index(root)
    sizes = [(s.entry.chunks, s.entry.deleted_chunks) for s in merged.segments]
    assert plan_merge(sizes, MergePolicy(floor=5, factor=4, per_tier=4)) == [] and len(sizes) <= 8
    listed = {s["name"] for v in root.glob("v-*") for s in json.loads((v / "manifest.json").read_text())["segments"]}
    assert {p.name for p in (root / "segments").iterdir()} == listed  # merged-away segments are removed
    _fresh(tmp_path / "fresh", docs)
    _assert_same_rankings(merged, Index(tmp_path / "fresh"), 11)
    assert merge_segments(root, MergePolicy(floor=5, factor=4, per_tier=4)) == []  # nothing left to do


def test_the_tiered_policy_keeps_few_segments_and_rewrites_each_row_a_few_times() -> None:
    policy = MergePolicy()
    segments: list[tuple[int, int]] = [(37_000, 0)]
    rewritten = 0
    for _ in range(1000):  # one small document per write onto a large base
        segments.append((12, 0))
        while plan := plan_merge(segments, policy):
            size = sum(segments[i][0] - segments[i][1] for i in plan)
            rewritten += size
            segments = [s for i, s in enumerate(segments) if i not in plan] + [(size, 0)]
        assert len(segments) <= 2 * policy.per_tier + 1  # per tier fewer than per_tier, and 2 tiers here
    assert sum(s[0] for s in segments) == 37_000 + 12_000
    assert rewritten < 5 * 12_000  # each added row merged about once per tier it climbs, the base never
    assert plan_merge([(100, 40), (100, 0)], policy) == [0]  # mostly deleted: rewritten to drop them


def test_an_index_of_the_whole_version_format_is_read_then_upgraded_on_its_first_write(tmp_path: Path) -> None:
    root = tmp_path / "old"
    shutil.copytree(FORMAT1, root)
    old = Index(root)
    assert old.manifest["format"] == 1 and not old.segments and old.docs.count_documents() == 3
    before = _bm25_groups(old, ["医师", "义务"])
    assert before[0] == (before[0][0], frozenset({"医师法-0"}))  # the chunk holding both terms
    extra = _document("新增文件", 0)
    with IndexWriter(root, {"backend": "test", "model": "m", "dim": 8}) as writer:
        assert writer.document_ids() == ["传染病防治法", "医师法", "药品管理法"]
        extra["vectors"] = extra["vectors"][:, :8]
        _add(writer, extra)
        writer.delete_document("药品管理法")
        writer.commit()
    upgraded = Index(root)
    assert upgraded.manifest["format"] == 2 and len(upgraded.segments) == 2
    assert upgraded.docs.document_ids() == ["传染病防治法", "医师法", "新增文件"]
    # the same chunks, rebuilt from scratch (texts and vectors read back from the old version), rank alike
    fresh_root = tmp_path / "fresh"
    with IndexWriter(fresh_root, {"backend": "test", "model": "m", "dim": 8}) as writer:
        for doc_id in ("传染病防治法", "医师法"):
            chunks = old.docs.document_chunks(doc_id)
            vectors = _stack(old, [c.rid for c in chunks])
            for c in chunks:
                c.rid = None
            writer.add_document(
                doc_id, f"{doc_id}.md", f"h-{doc_id}", chunks, vectors, [c.text.split() for c in chunks]
            )
        _add(writer, extra)
        writer.commit()
    fresh = Index(fresh_root)
    for query in (["医师", "义务"], ["传染病", "报告"], ["隐私"], WORDS[:6]):
        assert _bm25_groups(upgraded, query) == _bm25_groups(fresh, query)
    queries = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    assert _dense(upgraded, queries, 5) == _dense(fresh, queries, 5)
    assert len(list(root.glob("v-*"))) == 2  # the old version kept as the rollback, nothing else


def _stack(index: Index, rids: list[int]) -> np.ndarray:
    """The stored vectors of ``rids``, in that order."""
    ids, vectors = (np.concatenate(p) for p in zip(*index.store.items(), strict=True))
    position = {int(r): i for i, r in enumerate(ids)}
    return vectors[[position[r] for r in rids]]


def test_counting_postings_equals_the_whole_index_bm25_to_the_bit(tmp_path: Path) -> None:
    """A fresh single-segment index scores exactly as the whole-version BM25 of the same chunks did."""
    old = Index(FORMAT1)
    root = tmp_path / "copy"
    shutil.copytree(FORMAT1, root)
    with IndexWriter(root, {"backend": "test", "model": "m", "dim": 8}) as writer:
        extra = _document("临时", 0)
        extra["vectors"] = extra["vectors"][:, :8]
        _add(writer, extra)
        writer.delete_document("临时")  # a write that leaves the chunks as they were: the upgrade alone
        writer.commit()
    new = Index(root)
    for query in (["医师", "义务"], ["传染病", "报告", "报告"], ["药品", "应当", "制度"]):
        a, b = old.bm25.search(query, 20), new.bm25.search(query, 20)
        assert a[1].tolist() == b[1].tolist() and a[0].tobytes() == b[0].tobytes()
    assert Counter(new.docs.document_ids()) == Counter(old.docs.document_ids())


@pytest.mark.parametrize("seed", [3, 11])
def test_a_name_search_lists_and_counts_only_live_documents(tmp_path: Path, seed: int) -> None:
    """Listing by a part of the name over segments with replaced and deleted documents equals listing the
    documents the history leaves, page by page, with the same total."""
    docs = _history(tmp_path / "idx", seed, 40, EAGER)
    index = Index(tmp_path / "idx")
    for part in ("-3", "d0", "-", "no-such-name", "%", "_"):
        want = sorted(d for d in docs if part in d)
        got = [row[0] for offset in range(0, 60, 7) for row in index.docs.list_documents(offset, 7, part)]
        assert got == want and index.docs.count_documents(part) == len(want), part
