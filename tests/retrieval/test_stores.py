"""One contract test for every vector-store backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.embedders import normalize_rows
from retrieval.protocols import VectorStore
from retrieval.stores import MISSING_ID, StoreError, create_store, load_store

DIM = 16
try:
    import milvus_lite  # noqa: F401
    import pymilvus  # noqa: F401

    HAVE_MILVUS = True
except ImportError:
    HAVE_MILVUS = False
BACKENDS = [
    "faiss",
    "numpy",
    pytest.param("milvus", marks=pytest.mark.skipif(not HAVE_MILVUS, reason='pip install -e ".[milvus]"')),
]


def _create(backend: str, tmp_path: Path):
    # Milvus Lite keeps the collection in a local file; the other backends are in memory until saved.
    options = {"uri": str(tmp_path / "milvus.db"), "collection": "contract"} if backend == "milvus" else {}
    return create_store(backend, DIM, **options)


@pytest.fixture()
def vectors() -> np.ndarray:
    return normalize_rows(np.random.default_rng(0).normal(size=(50, DIM)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_store_contract(backend: str, vectors: np.ndarray, tmp_path: Path) -> None:
    store = _create(backend, tmp_path)
    assert isinstance(store, VectorStore)
    ids = np.arange(100, 150, dtype=np.int64)
    store.add(ids, vectors)
    assert store.count() == 50

    scores, found = store.search(vectors[:3], k=5)
    assert found[:, 0].tolist() == [100, 101, 102]  # each vector is its own nearest neighbour
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first

    allowed = np.array([120, 121, 122], dtype=np.int64)
    _, filtered = store.search(vectors[:1], k=5, allowed=allowed)
    assert set(filtered[0][filtered[0] != MISSING_ID]) <= set(allowed.tolist())

    assert store.delete(np.array([100, 999])) == 1
    assert store.count() == 49
    _, after = store.search(vectors[:1], k=3)
    assert 100 not in after[0]

    store.save(tmp_path)
    loaded = load_store(backend, tmp_path, DIM)
    assert isinstance(loaded, VectorStore) and loaded.count() == 49
    np.testing.assert_array_equal(loaded.search(vectors[5:6], k=4)[1], store.search(vectors[5:6], k=4)[1])
    _optional_capabilities_are_declared(loaded, vectors[5:6])


def _optional_capabilities_are_declared(store, query: np.ndarray) -> None:
    """Every capability the index calls exists on every store (a base class with defaults, no probing) and
    answers consistently: excluded ids (a segment's deletions) are filtered inside the search, so ``k``
    results still come back."""
    from retrieval.stores import StoreBase

    assert isinstance(store, StoreBase)
    described = store.describe()
    assert described is None or described["backend"] in ("faiss", "numpy", "milvus")
    full = store.search(query, k=6)[1][0].tolist()
    rest = store.search(query, k=4, excluded=np.asarray(full[:2]))[1][0].tolist()
    assert rest == full[2:6]
    both = store.search(query, k=2, allowed=np.asarray(full[:4]), excluded=np.asarray(full[:1]))[1][0].tolist()
    assert both == full[1:3]
    assert store.external == (store.max_excluded is not None)  # only a server's expressions are bounded
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_store_rejects_wrong_dimension(backend: str, tmp_path: Path) -> None:
    store = _create(backend, tmp_path)
    with pytest.raises(StoreError):
        store.add(np.arange(2), np.ones((2, DIM + 1), dtype=np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_store_search(backend: str, tmp_path: Path) -> None:
    scores, ids = _create(backend, tmp_path).search(np.ones((1, DIM), dtype=np.float32), k=3)
    assert (ids == MISSING_ID).all()


def test_backends_agree(vectors: np.ndarray, tmp_path: Path) -> None:
    ids = np.arange(50, dtype=np.int64)
    results = []
    for backend in ["faiss", "numpy", *(["milvus"] if HAVE_MILVUS else [])]:
        store = _create(backend, tmp_path)
        store.add(ids, vectors)
        results.append(store.search(vectors[10:12] + 0.05, k=10)[1])
    np.testing.assert_array_equal(results[0], results[1])


def test_unknown_backend_and_missing_extra() -> None:
    with pytest.raises(StoreError, match="unknown vector store"):
        create_store("nope", DIM)
    if not HAVE_MILVUS:
        with pytest.raises(StoreError, match="pip install"):
            create_store("milvus", DIM)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_faiss_layouts_search_filter_and_survive_updates(kind: str, tmp_path: Path) -> None:
    """Every FAISS layout finds each vector itself, filters inside the search, and can be changed after loading."""
    rng = np.random.default_rng(1)
    vectors = normalize_rows(rng.normal(size=(600, DIM)))
    ids = np.arange(1000, 1600, dtype=np.int64)
    store = create_store("faiss", DIM, kind=kind, nlist=8, pq_m=4, nprobe=8, refine=8)
    store.add(ids, vectors)
    store.save(tmp_path / "v1")
    assert store.describe()["layout"] == kind
    loaded = load_store("faiss", tmp_path / "v1", DIM, **{k: v for k, v in store.describe().items() if k != "backend"})
    scores, found = loaded.search(vectors[:20], k=3)
    assert (found[:, 0] == ids[:20]).mean() >= 0.9
    allowed = ids[300:310]
    _, found = loaded.search(vectors[:5], k=3, allowed=allowed)
    assert np.isin(found[found != MISSING_ID], allowed).all() and (found != MISSING_ID).any()
    assert loaded.delete(ids[:100]) == 100
    loaded.add(np.arange(5000, 5010, dtype=np.int64), vectors[:10])
    loaded.save(tmp_path / "v2")
    again = load_store("faiss", tmp_path / "v2", DIM, **{k: v for k, v in loaded.describe().items() if k != "backend"})
    assert again.count() == 510 and again.describe()["layout"] == kind
    _, found = again.search(vectors[:10], k=1)
    assert (found[:, 0] == np.arange(5000, 5010)).mean() >= 0.9


def test_faiss_auto_is_exact_below_the_threshold(tmp_path: Path, vectors: np.ndarray) -> None:
    store = create_store("faiss", DIM)
    store.add(np.arange(50, dtype=np.int64), vectors)
    store.save(tmp_path)
    assert store.describe()["kind"] == "auto" and store.describe()["layout"] == "flat"


def _record_milvus_searches(monkeypatch: pytest.MonkeyPatch, record) -> None:
    """Call ``record`` with the keyword arguments of every search the Milvus client sends (its public API)."""
    import pymilvus

    search = pymilvus.MilvusClient.search

    def recorded(self, *args, **kwargs):
        record(kwargs)
        return search(self, *args, **kwargs)

    monkeypatch.setattr(pymilvus.MilvusClient, "search", recorded)


@pytest.mark.skipif(not HAVE_MILVUS, reason='pip install -e ".[milvus]"')
@pytest.mark.parametrize("deep_search", [True, False])
def test_milvus_filters_longer_than_one_expression_are_searched_in_parts(
    vectors: np.ndarray, tmp_path: Path, monkeypatch, deep_search: bool
) -> None:
    """A filter admitting more ids than one Milvus expression holds: answered exactly by one deeper unfiltered
    search when that is cheap, else by expressions in parts merged by score."""
    import retrieval.stores.milvus_search as milvus

    monkeypatch.setattr(milvus, "MAX_FILTER_IDS", 7)
    if not deep_search:
        monkeypatch.setattr(milvus, "_MAX_TOPK", 8)
    ids = np.arange(100, 100 + len(vectors), dtype=np.int64)
    store, reference = _create("milvus", tmp_path), create_store("numpy", DIM)
    store.add(ids, vectors)
    reference.add(ids, vectors)
    calls: list[str] = []
    _record_milvus_searches(monkeypatch, lambda kwargs: calls.append(kwargs["filter"]))
    allowed = ids[::2]  # 25 ids: four expressions
    for query in vectors[:5]:
        calls.clear()
        got_scores, got_ids = store.search(query[None], 6, allowed)
        want_scores, want_ids = reference.search(query[None], 6, allowed)
        assert got_ids.tolist() == want_ids.tolist() and np.allclose(got_scores, want_scores, atol=1e-5)
        assert calls == [""] if deep_search else len(calls) == 4 and all(c.startswith("id in [") for c in calls)
    # The 10 ids least like the query: a search 22 deep finds none of them, so the parts answer after it.
    far = reference.search(vectors[40:41], len(ids))[1][0][-10:]
    calls.clear()
    got_ids = store.search(vectors[40:41], 2, far)[1]
    assert got_ids.tolist() == reference.search(vectors[40:41], 2, far)[1].tolist()
    assert [c.startswith("id in [") for c in calls] == [False] * deep_search + [True, True]  # 10 ids: 2 parts
    assert (store.search(vectors[:1], 3, np.array([], dtype=np.int64))[1] == MISSING_ID).all()


@pytest.mark.skipif(not HAVE_MILVUS, reason='pip install -e ".[milvus]"')
def test_milvus_lite_iterators_log_no_server_traceback(
    vectors: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Milvus Lite lacks AllocTimestamp; reading a generation back must not log an ERROR traceback for it."""
    import logging

    store = _create("milvus", tmp_path)
    store.add(np.arange(len(vectors), dtype=np.int64), vectors)
    with caplog.at_level(logging.INFO):
        assert sum(len(ids) for ids, _ in store.items(batch=16)) == len(vectors)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.skipif(not HAVE_MILVUS, reason='pip install -e ".[milvus]"')
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_milvus_index_types_find_the_exact_neighbours(tmp_path: Path, kind: str) -> None:
    """``--index-type flat`` is exact; ``hnsw`` (with its search depth) finds the exact top 10 on 500 vectors."""
    rows = normalize_rows(np.random.default_rng(1).normal(size=(500, DIM)))
    store = create_store("milvus", DIM, uri=str(tmp_path / "m.db"), collection="kinds", kind=kind)
    reference = create_store("numpy", DIM)
    for target in (store, reference):
        target.add(np.arange(500, dtype=np.int64), rows)
    got, want = store.search(rows[:20], 10)[1], reference.search(rows[:20], 10)[1]
    overlap = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got.tolist(), want.tolist(), strict=True)])
    assert overlap == 1.0 if kind == "flat" else overlap >= 0.95
    assert store.describe()["kind"] == kind
    # Deeper than a Milvus server allows (16,384; Milvus Lite does not check): asked within it, the rest empty.
    limits: list[int] = []
    with pytest.MonkeyPatch.context() as patch:
        _record_milvus_searches(patch, lambda kwargs: limits.append(kwargs["limit"]))
        deep = store.search(rows[:1], 20000)[1]
    assert limits == [16384] and deep.shape == (1, 20000)
    assert (deep[0, :500] >= 0).all() and (deep[0, 500:] == MISSING_ID).all()
