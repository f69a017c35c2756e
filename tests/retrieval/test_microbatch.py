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
    assert not closer.is_alive() and not batcher._thread.is_alive()
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
    """Every forward pass in order, as (side, texts); a document pass can be held like a query one."""

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(["doc", *texts])
        self.entered.set()
        self.release.wait(10)
        return self.inner.embed_documents(texts)


def test_a_search_waits_for_one_bulk_slice_never_for_the_bulk_queue(tiny_embedder) -> None:
    """Four clients' bulk work (documents) is queued; a question arrives while the first slice runs: it goes
    next, before the other 39 slices (the model used to serve them first in, first out)."""
    recorder = Recorder(tiny_embedder)
    batcher = MicroBatcher(recorder, max_wait_ms=1, bulk_slice=16)
    try:
        recorder.release.clear()
        bulk = [
            batcher.submit([f"{c}号文件第{i}条 医师应当遵守执业规范。" for i in range(160)], "document")
            for c in range(4)
        ]
        assert recorder.entered.wait(5)  # the first bulk slice is on the model
        question = batcher.submit_queries(["医师有哪些义务？"])
        recorder.release.set()
        question.result(10)
        for future in bulk:
            assert future.result(30).shape == (160, tiny_embedder.dim)
        sides = ["doc" if call[0] == "doc" else "query" for call in recorder.calls]
        assert sides.index("query") == 1 and len(sides) == 1 + 4 * 10  # one slice, the question, the rest
        assert all(len(call) - 1 <= 16 for call in recorder.calls if call[0] == "doc")
    finally:
        batcher.close()
