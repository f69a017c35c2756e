"""The serving micro-batcher and query cache, over the tiny model."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from retrieval.embedders import EmbedderError
from retrieval.embedders.microbatch import MicroBatcher, QueryCache
from retrieval.embedders.sentence_transformers import SentenceTransformerEmbedder

QUESTIONS = [
    "医生在执业活动中应当履行哪些义务？",
    "网上药店卖假药怎么处罚？",
    "传染病疫情报告的时限是多久？",
    "医师注册需要什么条件？",
    "药品广告可以做哪些宣传？",
    "医疗机构泄露患者隐私要承担什么责任？",
    "乡村医生可以开处方吗？",
    "疫苗接种出现异常反应谁来赔偿？",
]


class Gate:
    """The tiny embedder behind a gate: records each call, can hold a call until released, fails on 坏."""

    def __init__(self, inner: SentenceTransformerEmbedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.calls: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def describe(self) -> dict:
        return self.inner.describe()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.entered.set()
        self.release.wait(10)
        if any("坏" in t for t in texts):
            raise EmbedderError("cannot embed 坏")
        return self.inner.embed_queries(texts)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed_documents(texts)


@pytest.fixture()
def gate(tiny_embedder: SentenceTransformerEmbedder) -> Gate:
    return Gate(tiny_embedder)


def _hold(gate: Gate, batcher: MicroBatcher):
    """Occupy the worker with one request, so the next ones queue up together."""
    gate.release.clear()
    gate.entered.clear()
    first = batcher.submit_queries(["占位"])
    assert gate.entered.wait(5)
    return first


def test_concurrent_requests_share_one_forward_pass_in_order(gate: Gate, tiny_embedder) -> None:
    batcher = MicroBatcher(gate, max_wait_ms=1, max_batch=64)
    try:
        first = _hold(gate, batcher)
        futures = [batcher.submit_queries([q, QUESTIONS[0]]) for q in QUESTIONS]
        gate.release.set()
        results = [f.result(5) for f in futures]
        first.result(5)
    finally:
        batcher.close()
    assert gate.calls[1] == list(dict.fromkeys([t for q in QUESTIONS for t in (q, QUESTIONS[0])]))  # one pass
    assert len(gate.calls) == 2 and batcher.batch_sizes[-1] == len(QUESTIONS)
    for question, vectors in zip(QUESTIONS, results, strict=True):
        expected = tiny_embedder.embed_queries([question, QUESTIONS[0]])
        assert vectors.shape == (2, tiny_embedder.dim) and np.allclose(vectors, expected, atol=1e-5)


def test_a_failing_request_does_not_fail_the_others(gate: Gate) -> None:
    batcher = MicroBatcher(gate, max_wait_ms=1)
    try:
        first = _hold(gate, batcher)
        good = [batcher.submit_queries([q]) for q in QUESTIONS[:3]]
        bad = batcher.submit_queries(["坏问题"])
        gate.release.set()
        first.result(5)
        assert all(f.result(5).shape == (1, gate.dim) for f in good)
        with pytest.raises(EmbedderError, match="坏"):
            bad.result(5)
    finally:
        batcher.close()


def test_wait_is_bounded_and_a_lone_caller_does_not_wait(gate: Gate) -> None:
    batcher = MicroBatcher(gate, max_wait_ms=200, max_batch=64)
    try:
        batcher.embed_queries(QUESTIONS[:1])  # warm
        start = time.perf_counter()
        batcher.embed_queries(QUESTIONS[1:2])
        assert time.perf_counter() - start < 0.15  # idle: no 200 ms wait for company
        first = _hold(gate, batcher)
        pair = [batcher.submit_queries([q]) for q in QUESTIONS[:2]]
        gate.release.set()
        first.result(5), [f.result(5) for f in pair]  # under load now: the next batch may wait
        start = time.perf_counter()
        batcher.embed_queries(QUESTIONS[2:3])
        waited = time.perf_counter() - start
        assert 0.15 < waited < 1.5  # waited for company, but no longer than the bound (plus the forward)
    finally:
        batcher.close()


def test_shutdown_finishes_queued_work_then_refuses(gate: Gate) -> None:
    batcher = MicroBatcher(gate, max_wait_ms=1)
    first = _hold(gate, batcher)
    queued = [batcher.submit_queries([q]) for q in QUESTIONS[:4]]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    gate.release.set()
    closer.join(10)
    assert not closer.is_alive() and not batcher.running
    assert first.result(1).shape == (1, gate.dim) and all(f.result(1).shape == (1, gate.dim) for f in queued)
    with pytest.raises(EmbedderError, match="stopped"):
        batcher.submit_queries(["还有吗"])


def test_many_threads_get_their_own_vectors(tiny_embedder: SentenceTransformerEmbedder) -> None:
    batcher = MicroBatcher(tiny_embedder, max_wait_ms=2, max_batch=16)
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda q: batcher.embed_queries([q])[0], QUESTIONS * 6))
    finally:
        batcher.close()
    expected = tiny_embedder.embed_queries(QUESTIONS)
    for i, vector in enumerate(results):
        assert np.allclose(vector, expected[i % len(QUESTIONS)], atol=1e-5)
    assert max(batcher.batch_sizes) > 1 and sum(batcher.batch_sizes) < len(results)


def test_query_cache_answers_repeats_without_the_model(gate: Gate) -> None:
    cache = QueryCache(MicroBatcher(gate, max_wait_ms=1), size=3)
    try:
        first = cache.embed_queries(QUESTIONS[:2])
        calls = len(gate.calls)
        again = cache.embed_queries([QUESTIONS[1], QUESTIONS[0]])
        assert len(gate.calls) == calls and np.array_equal(again, first[::-1])
        cache.embed_queries(QUESTIONS[2:5])  # evicts the least recently used
        cache.embed_queries(QUESTIONS[:1])
        assert gate.calls[-1] == [QUESTIONS[0]] and cache.hits == 2 and cache.misses == 6
    finally:
        cache.close()


class Recorder(Gate):
    """Every forward pass in order, as (side, texts); document passes wait on their own gate."""

    def __init__(self, inner: SentenceTransformerEmbedder) -> None:
        super().__init__(inner)
        self.documents_entered = threading.Event()
        self.documents_release = threading.Event()

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(["doc", *texts])
        self.documents_entered.set()
        self.documents_release.wait(10)
        return self.inner.embed_documents(texts)


def test_a_search_never_waits_for_bulk_work(tiny_embedder) -> None:
    """Four clients' bulk work (documents) is queued and its first slice is stuck on the model: a question
    is still answered at once (it used to wait for the slice, and before that for all 40 slices)."""
    recorder = Recorder(tiny_embedder)
    batcher = MicroBatcher(recorder, max_wait_ms=1, bulk_slice=16)
    try:
        bulk = [
            batcher.submit([f"{c}号文件第{i}条 医师应当遵守执业规范。" for i in range(160)], "document")
            for c in range(4)
        ]
        assert recorder.documents_entered.wait(5)  # the first bulk slice is on the model, held there
        question = batcher.submit_queries(["医师有哪些义务？"])
        vector = question.result(5)
        assert np.allclose(vector, tiny_embedder.embed_queries(["医师有哪些义务？"]), atol=1e-5)
        assert not bulk[0].done() and sum(call[0] == "doc" for call in recorder.calls) == 1
        recorder.documents_release.set()
        for c, future in enumerate(bulk):
            expected = tiny_embedder.embed_documents([f"{c}号文件第{i}条 医师应当遵守执业规范。" for i in range(160)])
            assert np.allclose(future.result(30), expected, atol=1e-5)
        docs = [call for call in recorder.calls if call[0] == "doc"]
        assert len(docs) == 4 * 10 and all(len(call) - 1 <= 16 for call in docs)
    finally:
        recorder.documents_release.set()
        batcher.close()


def test_bulk_and_searches_at_once_get_the_right_vectors(tiny_embedder: SentenceTransformerEmbedder) -> None:
    """Both workers run the same model at the same time (prefix cache, tokenizer and all): every vector is the
    one a lone call computes."""
    documents = [f"第{i}条 医疗机构应当对患者的隐私保密，{'并遵守诊疗规范。' * (i % 7)}" for i in range(96)]
    batcher = MicroBatcher(tiny_embedder, max_wait_ms=1, bulk_slice=4)
    try:
        bulk = [batcher.submit(documents, "document") for _ in range(3)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda q: batcher.embed_queries([q])[0], QUESTIONS * 5))
        results = [future.result(60) for future in bulk]
    finally:
        batcher.close()
    expected_queries = tiny_embedder.embed_queries(QUESTIONS)
    for i, vector in enumerate(answers):
        assert np.allclose(vector, expected_queries[i % len(QUESTIONS)], atol=1e-5)
    expected_documents = tiny_embedder.embed_documents(documents)
    assert all(np.allclose(result, expected_documents, atol=1e-5) for result in results)
