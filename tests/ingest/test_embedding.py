"""The embedding stage: a stopped command does not wait for a batch a remote server holds."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pytest

from ingest.embedding import EmbedStage
from retrieval.embedders.base import EmbedderBase

TEXTS = ["第一条 为了保障公民的合法权益，制定本法。", "第二条 本法适用于中华人民共和国境内。"]


class StalledServer(EmbedderBase):
    """A remote text embedder whose requests hang until released (or ``give_up_s`` passes)."""

    name = "stalled-server"

    @property
    def dim(self) -> int:
        return 4

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_documents(texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t) for t in texts]

    def describe(self) -> dict:
        return {"backend": "openai", "model": self.name, "dim": self.dim}

    def __init__(self, give_up_s: float = 10.0) -> None:
        self.started, self.release, self.finished = threading.Event(), threading.Event(), threading.Event()
        self.give_up_s = give_up_s

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        self.started.set()
        self.release.wait(self.give_up_s)
        self.finished.set()
        return np.array([[len(t), 1, 0, 0] for t in texts], dtype=np.float32)


def _interrupted_ingest(server: StalledServer) -> bool:
    """Stop while a batch is in flight; whether the batch had finished when the stage let go."""
    with pytest.raises(KeyboardInterrupt), EmbedStage(server) as stage:
        stage.submit(None, TEXTS)
        assert server.started.wait(10)
        raise KeyboardInterrupt
    return server.finished.is_set()


def test_ctrl_c_leaves_the_batch_in_flight_behind() -> None:
    server = StalledServer()
    try:
        assert _interrupted_ingest(server) is False  # the old stage waited here until the request gave up
    finally:
        server.release.set()
    assert server.finished.wait(10)


def test_an_ingest_stopped_off_the_main_thread_waits_for_its_batch() -> None:
    """A server's cancelled ingest keeps one user per model: the batch ends before the stage is gone."""
    server = StalledServer(give_up_s=0.5)
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(_interrupted_ingest(server)))
    worker.start()
    worker.join(30)
    assert result == [True]


def test_a_shard_comes_back_in_input_order() -> None:
    """Texts are batched longest first; the vectors are put back where their texts were."""
    texts = [text[: 5 + (i * 7) % 17] for i, text in enumerate(TEXTS * 70)]
    with EmbedStage(StalledServer(give_up_s=0)) as stage:  # type: ignore[arg-type]
        vectors = stage.submit(None, texts).result(timeout=30)
    assert vectors[:, 0].tolist() == [len(t) for t in texts] and len(set(vectors[:, 0])) > 5
