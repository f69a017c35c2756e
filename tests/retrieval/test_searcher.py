from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.docstore import FilterError
from retrieval.index import Index
from retrieval.searcher import Searcher, SearchError, SearchOptions
from tests.conftest import SAMPLE_STATUTES


def _milvus_available() -> bool:
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError:
        return False
    return True


STORES = [
    "faiss",
    pytest.param("milvus", marks=pytest.mark.skipif(not _milvus_available(), reason='pip install -e ".[milvus]"')),
]


@pytest.fixture(scope="module", params=STORES)
def searcher(request, sample_index: Path, tmp_path_factory, tiny_embedder, analyzer) -> Searcher:
    """The sample statutes searched through each vector store (Milvus Lite: the same index, its vectors moved)."""
    index = sample_index
    if request.param == "milvus":
        import shutil

        from retrieval.index import migrate_store

        index = tmp_path_factory.mktemp("milvus") / "sample"
        shutil.copytree(sample_index, index)
        migrate_store(index, {"backend": "milvus", "uri": str(index.parent / "m.db"), "collection": "sample"})
    view = Index(index)
    assert view.manifest["store"]["backend"] == request.param
    return Searcher(view, tiny_embedder, analyzer)


def _labels(outcome) -> list[tuple[str, str]]:
    return [(h.chunk.metadata["law"], h.chunk.metadata["article"]) for h in outcome.hits]


def test_bm25_finds_the_statute_article(searcher: Searcher) -> None:
    out = searcher.search("医师在执业活动中履行哪些义务", SearchOptions(top_k=3, mode="bm25"))
    assert ("中华人民共和国医师法", "第二十三条") in _labels(out)
    assert out.hits[0].ranks == {"bm25": 1}


def test_traditional_query_finds_simplified_statute(searcher: Searcher) -> None:
    out = searcher.search("醫師在執業活動中履行哪些義務", SearchOptions(top_k=3, mode="bm25"))
    assert ("中华人民共和国医师法", "第二十三条") in _labels(out)


def test_modes_and_leg_details(searcher: Searcher) -> None:
    dense = searcher.search("假药", SearchOptions(top_k=5, mode="dense"))
    assert len(dense.hits) == 5 and all(set(h.ranks) == {"dense"} for h in dense.hits)
    assert all(-1.0 <= h.score <= 1.0 for h in dense.hits)
    hybrid = searcher.search("假药", SearchOptions(top_k=5))
    assert len(hybrid.hits) == 5
    assert any(set(h.ranks) == {"dense", "bm25"} or "bm25" in h.ranks for h in hybrid.hits)
    assert [h.score for h in hybrid.hits] == sorted((h.score for h in hybrid.hits), reverse=True)


def test_filters_apply_to_both_legs(searcher: Searcher) -> None:
    opts = SearchOptions(top_k=10, filters={"law": "中华人民共和国药品管理法"})
    out = searcher.search("医师的义务", opts)
    assert out.hits and {h.chunk.metadata["law"] for h in out.hits} == {"中华人民共和国药品管理法"}
    assert searcher.search("医师", SearchOptions(filters={"law": "不存在的法"})).hits == []
    with pytest.raises(FilterError):
        searcher.search("医师", SearchOptions(filters={"bad key!": "x"}))


def test_group_by_doc_id(searcher: Searcher) -> None:
    out = searcher.search("医疗机构 患者", SearchOptions(top_k=4, mode="bm25", group_by="doc_id"))
    docs = [h.chunk.doc_id for h in out.hits]
    assert len(docs) == len(set(docs)) >= 3


def test_expand_article_and_neighbors(searcher: Searcher) -> None:
    base = searcher.search("医师 义务", SearchOptions(top_k=1, mode="bm25"))
    hit = base.hits[0].chunk
    near = searcher.search("医师 义务", SearchOptions(top_k=1, mode="bm25", expand="neighbors", neighbors=1))
    text = near.hits[0].chunk.text
    assert hit.text in text and len(near.hits[0].chunk.metadata["chunk_ids"]) in (2, 3)
    art = searcher.search("医师 义务", SearchOptions(top_k=1, mode="bm25", expand="article"))
    assert art.hits[0].chunk.text.startswith(hit.metadata["article"])


def test_expand_article_joins_a_split_article(tmp_path: Path, tiny_embedder, analyzer) -> None:
    from ingest.chunkers import ChunkSettings
    from ingest.pipeline import ingest

    ingest([SAMPLE_STATUTES / "医师法.md"], tmp_path, tiny_embedder, analyzer, ChunkSettings(64, 0), progress=False)
    searcher = Searcher(Index(tmp_path), tiny_embedder, analyzer)
    docs = searcher.index.docs
    split = next(
        c for c in docs.get(range(docs.count())).values() if c.metadata["parts"] > 1 and c.metadata["part"] == 2
    )
    assert split.text.startswith(f"{split.metadata['article']}（续）")
    out = searcher.search(split.text[-30:], SearchOptions(top_k=5, mode="bm25", expand="article"))
    joined = next(h.chunk for h in out.hits if h.chunk.metadata["article"] == split.metadata["article"])
    assert len(joined.metadata["chunk_ids"]) == split.metadata["parts"]
    assert "（续）" not in joined.text and joined.text.startswith(split.metadata["article"])


def test_score_threshold(searcher: Searcher) -> None:
    out = searcher.search("假药", SearchOptions(top_k=10, mode="bm25"))
    cut = out.hits[2].score
    kept = searcher.search("假药", SearchOptions(top_k=10, mode="bm25", score_threshold=cut))
    assert all(h.score >= cut for h in kept.hits) and len(kept.hits) == 3


def test_errors(searcher: Searcher, sample_index: Path, analyzer) -> None:
    for nothing in ("   ", "\x06\x0e"):  # nothing searchable: nothing found, no error
        empty = searcher.search(nothing)
        assert empty.hits == [] and empty.queries == []
    with pytest.raises(SearchError, match="mode"):
        searcher.search("x", SearchOptions(mode="fuzzy"))  # type: ignore[arg-type]
    with pytest.raises(SearchError, match="reranker"):
        searcher.search("x", SearchOptions(rerank=True))
    no_model = Searcher(Index(sample_index), None, analyzer)
    with pytest.raises(SearchError, match="embedding model"):
        no_model.search("x", SearchOptions(mode="dense"))
    assert no_model.search("假药", SearchOptions(mode="bm25")).hits
    degraded = no_model.search("假药")  # default hybrid without a model: the lexical leg alone
    assert degraded.mode == "bm25" and degraded.hits


def test_rerank_reorders_by_reranker_scores(sample_index: Path, tiny_embedder, analyzer, tiny_reranker_dir) -> None:
    from retrieval.rerankers import create_reranker

    searcher = Searcher(Index(sample_index), tiny_embedder, analyzer, reranker=create_reranker(str(tiny_reranker_dir)))
    out = searcher.search("医疗机构泄露患者隐私", SearchOptions(top_k=5, rerank=True))
    assert out.reranked and len(out.hits) == 5
    scores = [h.score for h in out.hits]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    kept = searcher.search("医疗机构泄露患者隐私", SearchOptions(top_k=5, rerank=True, score_threshold=scores[1]))
    assert len(kept.hits) == 2
    assert len(searcher.search("医疗机构", SearchOptions(top_k=40, rerank=True)).hits) == 40


def test_multi_query_fusion_with_query_weights(searcher: Searcher) -> None:
    first = searcher.search("假药", SearchOptions(top_k=3, mode="bm25"))
    second = searcher.search("医师 义务", SearchOptions(top_k=3, mode="bm25"))
    only_first = searcher.search(["假药", "医师 义务"], SearchOptions(top_k=3, mode="bm25", query_weights=[1.0, 0.0]))
    only_second = searcher.search(["假药", "医师 义务"], SearchOptions(top_k=3, mode="bm25", query_weights=[0.0, 1.0]))
    assert [h.chunk.id for h in only_first.hits] == [h.chunk.id for h in first.hits]
    assert [h.chunk.id for h in only_second.hits] == [h.chunk.id for h in second.hits]
    even = searcher.search(["假药", "医师 义务"], SearchOptions(top_k=2, mode="bm25"))
    top = even.hits[0]
    assert set(top.ranks) <= {"bm25", "bm25#1"}
    assert top.score == pytest.approx(sum(1 / (60 + r) for r in top.ranks.values()))


def test_weighted_bm25_query_over_parts(searcher: Searcher) -> None:
    def top(parts, top_k=3, **kw):
        options = SearchOptions(top_k=top_k, mode="bm25", lexical=[parts], **kw)
        return searcher.search("假药 医师 义务", options).hits

    drugs = [h.chunk.id for h in searcher.search("假药", SearchOptions(top_k=3, mode="bm25")).hits]
    duties = [h.chunk.id for h in searcher.search("医师 义务", SearchOptions(top_k=3, mode="bm25")).hits]
    assert [h.chunk.id for h in top([("假药", 1.0), ("医师 义务", 0.0)])] == drugs
    assert [h.chunk.id for h in top([("假药", 0.0), ("医师 义务", 1.0)])] == duties
    # One leg whose raw score is the weighted sum of the parts' BM25 scores, each part scored as a plain
    # query (a repeated word counts twice, as in bm25s).
    mixed = top([("假药 假药", 0.3), ("医师 义务", 1.0)])
    assert set(mixed[0].ranks) == {"bm25"}
    alone = {h.chunk.id: h.score for h in top([("假药 假药", 1.0)], top_k=50)}
    plain = {h.chunk.id: h.score for h in searcher.search("假药 假药", SearchOptions(top_k=50, mode="bm25")).hits}
    assert alone == pytest.approx(plain) and alone[next(iter(alone))] > 0
    rest = {h.chunk.id: h.score for h in top([("医师 义务", 1.0)], top_k=50)}
    for hit in mixed:
        assert hit.score == pytest.approx(0.3 * alone.get(hit.chunk.id, 0) + rest.get(hit.chunk.id, 0), rel=1e-4)


def test_lexical_empty_list_runs_no_bm25_leg_and_empty_queries_keep_alignment(searcher: Searcher) -> None:
    out = searcher.search(["假药", "医师 义务"], SearchOptions(top_k=3, mode="hybrid", lexical=[[], None]))
    assert set().union(*(h.ranks for h in out.hits)) <= {"dense", "dense#1", "bm25#1"}
    assert any("bm25#1" in h.ranks for h in out.hits)
    duties = searcher.search("医师 义务", SearchOptions(top_k=3, mode="bm25"))
    padded = searcher.search(["  ", "假药", "医师 义务"], SearchOptions(top_k=3, mode="bm25", query_weights=[5, 0, 1]))
    assert [h.chunk.id for h in padded.hits] == [h.chunk.id for h in duties.hits]


def test_rrf_k_and_weights_from_searcher_defaults(sample_index: Path, tiny_embedder, analyzer) -> None:
    searcher = Searcher(Index(sample_index), tiny_embedder, analyzer, rrf_k=10, weights={"bm25": 2.0})
    top = searcher.search("假药", SearchOptions(top_k=1)).hits[0]
    expected = sum((2.0 if leg == "bm25" else 1.0) / (10 + rank) for leg, rank in top.ranks.items())
    assert top.score == pytest.approx(expected)
    override = searcher.search("假药", SearchOptions(top_k=1, rrf_k=60, weights={"bm25": 1.0})).hits[0]
    assert override.score == pytest.approx(sum(1 / (60 + r) for r in override.ranks.values()))
