"""LLM query rewriting against a local fake OpenAI-compatible chat server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from retrieval.rewriter import CONDENSE_SYSTEM_PROMPT, LLMQueryRewriter
from tests.fake_http import JSONHandler, serve

CHAT = [
    {"role": "user", "content": "我老公开了一家个体工商户，欠了供应商很多钱。"},
    {"role": "assistant", "content": "明白，这种情况比较常见。"},
    {"role": "user", "content": "那他欠的钱谁来还？"},
]

OTHER_QUESTION = "医师在执业活动中应当履行哪些义务？"  # a rewrite that points elsewhere than the conversation


class FakeChat(JSONHandler):
    behaviour = "ok"
    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = self.read_json()
        FakeChat.seen.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        if FakeChat.behaviour == "slow":
            time.sleep(1.0)
        if FakeChat.behaviour == "error":
            self.send_response(500)
            self.end_headers()
            return
        content = {
            "ok": "<think>\n想一想\n</think>\n个体工商户的债务应当由谁承担？",
            "empty": "   ",
            "other": OTHER_QUESTION,
        }.get(FakeChat.behaviour, "x")
        self.send_json({"choices": [{"message": {"role": "assistant", "content": content}}]})


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve(FakeChat) as url:
        yield url


def test_rewrites_with_condense_prompt(server: str) -> None:
    FakeChat.behaviour, FakeChat.seen = "ok", []
    rewriter = LLMQueryRewriter(server, "qwen3-8b", api_key="k", timeout_s=2.0)
    assert rewriter.rewrite(CHAT) == "个体工商户的债务应当由谁承担？"
    request = FakeChat.seen[-1]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer k"
    messages = request["body"]["messages"]
    assert messages[0]["content"] == CONDENSE_SYSTEM_PROMPT
    assert (
        "用户：我老公开了一家个体工商户" in messages[1]["content"]
        and "最后的问题：那他欠的钱谁来还？" in messages[1]["content"]
    )
    assert request["body"]["temperature"] == 0


@pytest.mark.parametrize("behaviour", ["error", "empty", "slow"])
def test_failures_return_none(server: str, behaviour: str) -> None:
    FakeChat.behaviour = behaviour
    assert LLMQueryRewriter(server, "m", timeout_s=0.3).rewrite(CHAT) is None


def test_unreachable_server_returns_none() -> None:
    assert LLMQueryRewriter("http://127.0.0.1:9/v1", "m", timeout_s=0.3).rewrite(CHAT) is None


def test_single_turn_needs_no_call() -> None:
    assert LLMQueryRewriter("http://127.0.0.1:9/v1", "m").rewrite(CHAT[-1:]) == "那他欠的钱谁来还？"


def test_search_api_uses_rewriter_and_falls_back(server: str, sample_index) -> None:
    from fastapi.testclient import TestClient

    from app.api import create_app
    from app.settings import Settings

    FakeChat.behaviour = "ok"
    settings = Settings(index=sample_index, rewrite_base_url=server, rewrite_model="m", load_model=False)
    with TestClient(create_app(settings)) as client:
        body = client.post("/search", json={"messages": CHAT, "mode": "bm25"}).json()
        assert body["queries"][0] == "个体工商户的债务应当由谁承担？"
        FakeChat.behaviour = "error"
        fallback = client.post("/search", json={"messages": CHAT, "mode": "bm25"}).json()
        assert "个体工商户" in fallback["queries"][0] and fallback["queries"][0].endswith("那他欠的钱谁来还？")


def test_rewrites_are_cached_across_runs_and_failures_are_not(server: str, tmp_path) -> None:
    from retrieval.rewriter import CachedRewriter

    FakeChat.behaviour, FakeChat.seen = "ok", []
    cache = tmp_path / "rewrites.sqlite"
    first = CachedRewriter(LLMQueryRewriter(server, "m"), cache)
    assert first.rewrite(CHAT) == "个体工商户的债务应当由谁承担？" and len(FakeChat.seen) == 1
    again = CachedRewriter(LLMQueryRewriter(server, "m"), cache)  # a new run
    assert again.rewrite(CHAT) == "个体工商户的债务应当由谁承担？" and len(FakeChat.seen) == 1
    assert (again.hits, again.misses) == (1, 0)
    other_model = CachedRewriter(LLMQueryRewriter(server, "other"), cache)
    assert other_model.rewrite(CHAT) and len(FakeChat.seen) == 2  # the model is part of the key
    FakeChat.behaviour = "error"
    changed = [*CHAT[:-1], {"role": "user", "content": "那她呢？"}]
    assert again.rewrite(changed) is None and again.failures == 1
    FakeChat.behaviour = "ok"
    assert again.rewrite(changed) == "个体工商户的债务应当由谁承担？"  # the failure was not stored


def test_eval_rewrite_mode_uses_the_llm_only_when_asked(server: str, sample_index, tmp_path) -> None:
    import json

    from app.evaluate import EvalConfig, EvalInputError, run_eval
    from app.services import build_services
    from app.settings import Settings

    dialogues = tmp_path / "d.jsonl"
    dialogues.write_text(json.dumps({"id": "d1", "messages": CHAT}, ensure_ascii=False) + "\n", encoding="utf-8")
    qrels = tmp_path / "q.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nd1\t医师法.md\t1\n", encoding="utf-8")
    FakeChat.behaviour, FakeChat.seen = "ok", []
    settings = Settings(
        index=sample_index, rewrite_base_url=server, rewrite_model="m", rewrite_cache=tmp_path / "r.sqlite"
    )
    services = build_services(settings, load_model=False)
    config = EvalConfig(qrels=qrels, dialogues=dialogues, mode="bm25")
    plain = run_eval(services, config, progress=False)
    assert plain["rewrite"] is None and FakeChat.seen == []  # LLM-free by default
    rewritten = run_eval(services, EvalConfig(qrels=qrels, dialogues=dialogues, mode="bm25", rewrite=True), False)
    assert rewritten["rewrite"] == {"cached": 0, "asked": 1, "failed": 0} and len(FakeChat.seen) == 1
    again = run_eval(services, EvalConfig(qrels=qrels, dialogues=dialogues, mode="bm25", rewrite=True), False)
    assert again["rewrite"]["cached"] == 1 and len(FakeChat.seen) == 1
    bare = build_services(Settings(index=sample_index), load_model=False)
    with pytest.raises(EvalInputError, match="ZHRAG_REWRITE_BASE_URL"):
        run_eval(bare, EvalConfig(qrels=qrels, dialogues=dialogues, mode="bm25", rewrite=True), False)


def test_rewrite_weight_sets_the_rewrites_share_of_the_fused_ranking(server: str, sample_index) -> None:
    """ZHRAG_REWRITE_WEIGHT: the rewritten question's fusion weight beside the builder's own queries."""
    from app.services import build_services
    from app.settings import Settings
    from retrieval.searcher import SearchOptions

    FakeChat.behaviour = "other"
    base = SearchOptions(mode="bm25", top_k=10)
    plans, tops = {}, {}
    for weight in (0.25, 4.0):
        settings = Settings(index=sample_index, rewrite_base_url=server, rewrite_model="m", rewrite_weight=weight)
        services = build_services(settings, load_model=False)
        plan = services.dialogue.build(CHAT, search_mode="bm25")
        hits = services.searcher.search(plan.queries, plan.search_options(base, services.searcher.weights)).hits
        plans[weight], tops[weight] = plan, [h.chunk.doc_id for h in hits[:3]]
        alone = [h.chunk.doc_id for h in services.searcher.search(OTHER_QUESTION, base).hits[:3]]
        services.close()
    assert plans[4.0].queries == plans[0.25].queries and plans[4.0].queries[0] == OTHER_QUESTION
    assert (plans[0.25].weights[0], plans[4.0].weights[0]) == (0.25, 4.0)
    assert plans[4.0].weights[1:] == plans[0.25].weights[1:]
    assert tops[4.0] == alone and tops[0.25] != alone  # heavy: the rewrite's ranking; light: the conversation's
