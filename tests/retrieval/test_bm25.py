from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from retrieval.bm25 import BM25Index
from tests.conftest import FIVE_DOCS


@pytest.fixture(scope="module")
def bm25(analyzer) -> BM25Index:
    tokens = [analyzer(d["title"] + "\n" + d["text"]) for d in FIVE_DOCS]
    return BM25Index.build(tokens, np.arange(100, 100 + len(FIVE_DOCS)))


def test_search_matches_bm25s_scores(bm25: BM25Index, analyzer) -> None:
    tokens = [t for t in analyzer.query_tokens("患者受到损害，医疗机构的赔偿责任") if t in bm25._vocab]
    expected = bm25._retriever.get_scores(tokens)
    scores, rids = bm25.search(tokens, k=len(FIVE_DOCS))
    assert len(rids) >= 2 and np.allclose(scores, expected[rids - 100], rtol=1e-5)
    assert list(scores) == sorted(scores, reverse=True) and all(scores > 0)


def test_weighted_terms_are_linear(bm25: BM25Index, analyzer) -> None:
    a, b = analyzer("患者"), analyzer("假药 成份")
    sa, ra = bm25.search(a, k=5)
    sb, rb = bm25.search(b, k=5)
    single = {**{r: 0.0 for r in rb}, **dict(zip(ra, sa, strict=True))}
    other = {**{r: 0.0 for r in ra}, **dict(zip(rb, sb, strict=True))}
    weights = Counter(a)
    weights.update({t: 0.25 * n for t, n in Counter(b).items()})
    scores, rids = bm25.search_weighted(weights, k=5)
    assert len(ra) >= 2 and len(rb) >= 1 and len(rids) >= 3
    for score, rid in zip(scores, rids, strict=True):
        assert score == pytest.approx(single.get(rid, 0.0) + 0.25 * other.get(rid, 0.0), rel=1e-5)
    # Row-id filters and unknown or zero-weight terms.
    allowed = rids[1:]
    filtered, kept = bm25.search_weighted(weights, k=5, allowed=allowed)
    assert set(kept) <= set(allowed) and len(kept) == len(rids) - 1
    assert bm25.search_weighted({"不存在的词": 1.0, a[0]: 0.0}, k=5)[1].size == 0


def test_incremental_builder_matches_bm25s_bit_for_bit(analyzer) -> None:
    """Counting chunks as they stream in gives exactly bm25s' scores (and replaced chunks are dropped)."""
    from pathlib import Path

    from retrieval.bm25 import BM25Builder, ChunkTerms
    from tests.conftest import SAMPLE_STATUTES

    text = (Path(SAMPLE_STATUTES) / "药品管理法.md").read_text(encoding="utf-8")
    tokens = [analyzer(line) for line in text.splitlines() if line.startswith("第")]
    rids = np.arange(len(tokens), dtype=np.int64) * 2 + 5
    reference = BM25Index.build(tokens, rids)
    builder = BM25Builder()
    half = len(tokens) // 2
    builder.add(rids[:half], ChunkTerms.count(tokens[:half]))
    builder.add([999], ChunkTerms.count([analyzer("假药 劣药 撤销")]))
    builder.add(rids[half:], ChunkTerms.count(tokens[half:]))
    builder.discard([999])
    built = builder.build()
    assert np.array_equal(built.rids, reference.rids)
    for question in ("销售假药的处罚", "药品上市许可持有人的义务", "药品广告", "医疗机构配制制剂"):
        query = analyzer.query_tokens(question)
        scores, found = built.search(query, k=50)
        expected_scores, expected = reference.search(query, k=50)
        assert len(found) > 5 and np.array_equal(found, expected) and np.array_equal(scores, expected_scores)
