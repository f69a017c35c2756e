from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.index import (
    Index,
    IndexMismatchError,
    IndexNotFoundError,
    IndexWriter,
    migrate_store,
    read_manifest,
)
from retrieval.metadata_filter import MetadataFilter
from retrieval.types import Chunk

DIM = 8
EMBEDDER = {"backend": "test", "model": "m", "dim": DIM}


def _chunks(doc_id: str, texts: list[str]) -> list[Chunk]:
    return [
        Chunk(id=f"{doc_id}-{i}", doc_id=doc_id, text=t, embed_text=t, metadata={"law": doc_id}, seq=i)
        for i, t in enumerate(texts)
    ]


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _write(root: Path, doc_id: str, texts: list[str], embedder=EMBEDDER) -> str:
    with IndexWriter(root, embedder) as writer:
        writer.add_document(
            doc_id,
            "src",
            f"h-{doc_id}-{len(texts)}",
            _chunks(doc_id, texts),
            _vectors(len(texts)),
            [t.split() for t in texts],
        )
        return writer.commit()


def test_round_trip(tmp_path: Path) -> None:
    _write(tmp_path, "医师法", ["医师 义务", "医师 权利"])
    index = Index(tmp_path)
    assert index.manifest["counts"] == {"documents": 1, "chunks": 2}
    assert index.store.count() == 2 and index.bm25 is not None and index.bm25.count() == 2
    chunk = index.docs.get([0])[0]
    assert chunk.text == "医师 义务" and chunk.metadata == {"law": "医师法"}
    assert index.docs.filter_rids(MetadataFilter.from_mapping({"law": "医师法"})).tolist() == [0, 1]
    assert index.docs.filter_rids(
        MetadataFilter.from_mapping({"law": ["x", "医师法"], "doc_id": "医师法"})
    ).tolist() == [0, 1]
    assert index.docs.filter_rids(MetadataFilter.from_mapping({"law": "nope"})).tolist() == []


def test_replacing_a_document_removes_old_chunks(tmp_path: Path) -> None:
    _write(tmp_path, "a", ["one two", "three"])
    _write(tmp_path, "a", ["four"])
    index = Index(tmp_path)
    assert index.store.count() == 1 and index.docs.count() == 1
    assert [c.text for c in index.docs.document_chunks("a")] == ["four"]


def test_failed_write_leaves_last_good_index(tmp_path: Path) -> None:
    _write(tmp_path, "a", ["one"])
    before = (tmp_path / "CURRENT").read_text()
    with pytest.raises(RuntimeError):
        with IndexWriter(tmp_path, EMBEDDER) as writer:
            writer.add_document("b", "s", "h", _chunks("b", ["x"]), _vectors(1), [["x"]])
            raise RuntimeError("crash mid-ingest")
    assert (tmp_path / "CURRENT").read_text() == before
    assert not list(tmp_path.glob(".staging-*"))
    assert Index(tmp_path).docs.count() == 1


def test_old_versions_pruned(tmp_path: Path) -> None:
    for i in range(4):
        _write(tmp_path, f"d{i}", ["x"])
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("v-")]) == 2
    assert Index(tmp_path).docs.count_documents() == 4


def test_model_mismatch_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "a", ["one"])
    with pytest.raises(IndexMismatchError, match="'m', not 'other'"):
        _write(tmp_path, "b", ["two"], embedder={**EMBEDDER, "model": "other"})
    with pytest.raises(IndexMismatchError, match="8-d"):
        _write(tmp_path, "b", ["two"], embedder={**EMBEDDER, "dim": 4})


def test_missing_index(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError, match="zhrag ingest"):
        read_manifest(tmp_path / "none")


def test_migrate_moves_every_vector_and_reports_progress(tmp_path: Path) -> None:
    _write(tmp_path, "医师法", [f"医师 义务 {i}" for i in range(30)])
    before = Index(tmp_path)
    ids, rows = (np.concatenate(parts) for parts in zip(*before.store.items(), strict=True))
    vectors = dict(zip(ids.tolist(), rows, strict=True))
    moved: list[int] = []
    migrate_store(tmp_path, {"backend": "numpy"}, on_moved=moved.append)
    after = Index(tmp_path)
    assert after.manifest["store"]["backend"] == "numpy" and sum(moved) == 30 and after.store.count() == 30
    for ids, rows in after.store.items():
        for rid, row in zip(ids.tolist(), rows, strict=True):
            np.testing.assert_array_equal(row, vectors[rid])  # the same vectors, not re-embedded
