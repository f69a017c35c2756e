"""Tokenise once, batch by tokens: the spec a worker tokenises with, and the batch planner."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.embedders.sentence_transformers import SentenceTransformerEmbedder
from retrieval.embedders.tokens import TokenSpec, padded_tokens, plan_batches
from tests.conftest import SAMPLE_STATUTES, SHARED, needs_shared


def _statute_lines() -> list[str]:
    text = (SAMPLE_STATUTES / "医师法.md").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.startswith("第")]


def test_spec_ids_are_what_the_tokenizer_gives(tiny_embedder: SentenceTransformerEmbedder) -> None:
    spec = tiny_embedder.token_spec
    texts = [*_statute_lines()[:20], "高血压患者要控制食盐摄入量" * 200]  # the last one is truncated
    expected = tiny_embedder.tokenizer(texts, truncation=True, max_length=spec.max_length)["input_ids"]
    assert [spec.model_input(spec.encode(t)) for t in texts] == expected
    assert spec.prefix == () and len(spec.suffix) == 1 and len(expected[-1]) == spec.max_length


@needs_shared
def test_spec_of_the_real_qwen3_tokenizer_appends_endoftext(tmp_path) -> None:
    from app.tiny_model import load_tokenizer_with_eos

    tokenizer = load_tokenizer_with_eos(SHARED / "qwen3-tokenizer", tmp_path / "tok")
    spec = TokenSpec.from_hf(tokenizer, 1024)
    assert spec.suffix == (151643,) and spec.prefix == () and spec.pad_left
    ids = spec.model_input(spec.encode("医师在执业活动中履行下列义务"))
    assert ids[-1] == 151643 and ids == tokenizer("医师在执业活动中履行下列义务")["input_ids"]


def test_token_ids_embed_like_text(tiny_embedder: SentenceTransformerEmbedder) -> None:
    """Pre-tokenised batches (padded, or packed without padding) give the vectors ``encode`` gives."""
    texts = _statute_lines()[:12]
    spec = tiny_embedder.token_spec
    ids = [spec.model_input(spec.encode(t)) for t in texts]
    expected = tiny_embedder.embed_documents(texts)
    assert np.allclose(tiny_embedder.embed_token_ids(ids), expected, atol=1e-5)
    packed = SentenceTransformerEmbedder(tiny_embedder.name, device="cpu", unpadded="on")
    assert packed.unpadded and np.allclose(packed.embed_token_ids(ids), expected, atol=1e-4)


def test_plan_batches_respects_the_budget_and_covers_everything() -> None:
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(5, 400, size=1000)] + [3000]  # one longer than the budget
    plan = plan_batches(lengths, max_tokens=4096, max_size=64)
    flat = [i for b in plan.batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in plan.batches:
        assert len(batch) <= 64 and (padded_tokens(lengths, batch) <= 4096 or len(batch) == 1)
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    assert plan.tokens == sum(lengths) and plan.padded == sum(padded_tokens(lengths, b) for b in plan.batches)
    # Length-sorted batches pad far less than fixed-size batches in input order.
    fixed = [list(range(i, min(i + 16, len(lengths)))) for i in range(0, len(lengths), 16)]
    fixed_ratio = 1 - sum(lengths) / sum(padded_tokens(lengths, b) for b in fixed)
    assert plan.padding_ratio < 0.05 < fixed_ratio
    assert plan_batches(lengths, 4096, 64).batches == plan.batches  # deterministic
    with pytest.raises(ValueError):
        plan_batches(lengths, 0)


def test_packed_plan_budgets_real_tokens() -> None:
    lengths = [30, 12, 12, 9, 40, 7, 25, 600]
    plan = plan_batches(lengths, max_tokens=64, packed=True)
    assert sorted(i for b in plan.batches for i in b) == list(range(len(lengths)))
    for batch in plan.batches:
        assert sum(lengths[i] for i in batch) <= 64 or len(batch) == 1
    assert plan.padded == plan.tokens == sum(lengths) and plan.padding_ratio == 0.0
    # The same budget holds more sequences per batch when padding does not count.
    skewed = [40, 20, 3, 3, 3, 3, 3, 3, 3, 3]
    assert [len(b) for b in plan_batches(skewed, 64, packed=True).batches] == [3, 7]
    assert [len(b) for b in plan_batches(skewed, 64).batches] == [1, 3, 6]
