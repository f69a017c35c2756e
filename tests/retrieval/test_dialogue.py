from __future__ import annotations

import pytest

from retrieval.dialogue import (
    ASSISTANT_WEIGHT,
    LEXICAL_DECAY,
    DialogueQueryBuilder,
    TurnWeights,
    is_elliptical,
    lexical_parts,
    opens_new_topic,
    switches_topic,
    turn_weights,
)


def _msgs(*users: str) -> list[dict[str, str]]:
    out = []
    for i, u in enumerate(users):
        if i:
            out.append({"role": "assistant", "content": "好的，我了解了。"})
        out.append({"role": "user", "content": u})
    return out


@pytest.fixture(scope="module")
def builder(analyzer) -> DialogueQueryBuilder:
    return DialogueQueryBuilder(analyzer)


def test_elliptical_last_turn_carries_subject(builder: DialogueQueryBuilder) -> None:
    plan = builder.build(_msgs("我老公开了一家个体工商户，经营不善欠了很多钱。", "那他欠的钱谁来还？"))
    assert plan.elliptical
    # Alone, the elliptical turn lacks its subject: only the contextual query is searched.
    assert len(plan.queries) == 1 and "个体工商户" in plan.queries[0]
    assert plan.queries[0].endswith("那他欠的钱谁来还？")
    assert plan.lexical == [
        [
            ("我老公开了一家个体工商户，经营不善欠了很多钱。", LEXICAL_DECAY),
            ("好的，我了解了。", ASSISTANT_WEIGHT * LEXICAL_DECAY),
            ("那他欠的钱谁来还？", 1.0),
        ]
    ]


def test_self_contained_last_turn_is_also_searched_alone(builder: DialogueQueryBuilder) -> None:
    last = "用人单位未依法缴纳社会保险费，劳动者可以解除劳动合同并要求经济补偿吗？"
    plan = builder.build(_msgs("我在一家装修公司干活。", last))
    assert not plan.elliptical
    assert plan.queries == ["我在一家装修公司干活。 " + last, last] and plan.weights == [1.0, 1.0]
    assert plan.lexical[1] is None  # the last turn alone: plain BM25 over its text
    # In pure BM25 mode the weighted turns query already holds the last turn at full weight.
    lexical_only = builder.build(_msgs("我在一家装修公司干活。", last), search_mode="bm25")
    assert lexical_only.queries == plan.queries[:1] and lexical_only.lexical[0][-1] == (last, 1.0)


def test_older_turns_are_reduced_to_keywords(builder: DialogueQueryBuilder) -> None:
    plan = builder.build(
        _msgs(
            "我们公司和物流企业签了仓储合同，存放一批货物。",
            "货物是电子产品，价值很高。",
            "合同约定按月付费。",
            "那他们弄丢了怎么办？",
        )
    )
    contextual = plan.queries[0]
    assert "我们公司和物流企业签了仓储合同" not in contextual and "仓储" in contextual
    assert "货物是电子产品，价值很高。 合同约定按月付费。 那他们弄丢了怎么办？" in contextual


def test_acknowledgement_starts_a_new_topic(builder: DialogueQueryBuilder) -> None:
    plan = builder.build(
        _msgs("加班费怎么算？", "明白。我最近在看人格权方面的书，说把人关起来侵犯人身自由。", "那这种要赔偿吗？")
    )
    assert plan.context_turns == ["明白。我最近在看人格权方面的书，说把人关起来侵犯人身自由。"]


def test_rewriter_adds_a_query_and_failure_falls_back(analyzer) -> None:
    class Fake:
        def __init__(self, answer):
            self.answer = answer

        def rewrite(self, messages):
            return self.answer

    msgs = _msgs("我老公开了一家个体工商户。", "那他欠的钱谁来还？")
    ok = DialogueQueryBuilder(analyzer, rewriter=Fake("个体工商户的债务由谁承担？")).build(msgs)
    assert ok.queries[0] == "个体工商户的债务由谁承担？" and ok.rewritten and len(ok.queries) == 2
    failed = DialogueQueryBuilder(analyzer, rewriter=Fake(None)).build(msgs)
    assert failed.queries == DialogueQueryBuilder(analyzer).build(msgs).queries and failed.rewritten is None


def test_topic_switch_drops_the_old_topic(builder: DialogueQueryBuilder) -> None:
    plan = builder.build(
        _msgs(
            "驾照扣满12分了要怎么处理？",
            "好的。还有个事，我们公司跟物流企业签了仓储合同，存放一批货物。",
            "那这种合同什么时候成立？",
        )
    )
    assert "驾照" not in plan.queries[0] and "仓储合同" in plan.queries[0]
    assert plan.context_turns == ["好的。还有个事，我们公司跟物流企业签了仓储合同，存放一批货物。"]
    # Neither the old topic's question nor the assistant's answer to it reaches the BM25 query.
    assert [text for text, _ in plan.lexical[0]] == [
        "好的。还有个事，我们公司跟物流企业签了仓储合同，存放一批货物。",
        "好的，我了解了。",
        "那这种合同什么时候成立？",
    ]


def test_related_history_is_kept(builder: DialogueQueryBuilder) -> None:
    msgs = _msgs(
        "我在装修公司干活，没签劳动合同。",
        "干活时从梯子上摔伤了，老板说我不算公司员工，不给工伤。",
        "那我这种情况怎么办？",
    )
    plan = builder.build(msgs)
    assert len(plan.context_turns) == 2
    assert "装修" in plan.queries[0] and "梯子" in plan.queries[0]
    # With a dense leg the most recent turn + last turn run as a lighter second query (both legs) ...
    recent = "干活时从梯子上摔伤了，老板说我不算公司员工，不给工伤。 那我这种情况怎么办？"
    assert plan.queries[1:] == [recent] and plan.weights == [1.0, 0.25] and plan.lexical[1] is None
    # ... in pure BM25 mode only the recency-weighted turns query runs.
    lexical_only = builder.build(msgs, search_mode="bm25")
    assert lexical_only.queries == plan.queries[:1] and len(lexical_only.lexical[0]) == 5


def test_modes(builder: DialogueQueryBuilder) -> None:
    msgs = _msgs("仓储合同的保管人有什么义务？", "那存货人呢？")
    assert builder.build(msgs, "last").queries == ["那存货人呢？"]
    assert builder.build(msgs, "concat").queries == ["仓储合同的保管人有什么义务？\n好的，我了解了。\n那存货人呢？"]
    assert builder.build(msgs, "concat-user").queries == ["仓储合同的保管人有什么义务？\n那存货人呢？"]
    assert builder.build(_msgs("单独的问题：假药怎么处罚？")).queries == ["单独的问题：假药怎么处罚？"]
    with pytest.raises(ValueError):
        builder.build([{"role": "assistant", "content": "hi"}])


def test_markers(analyzer) -> None:
    assert opens_new_topic("明白了。另外，邻居骂我怎么办")
    assert opens_new_topic("对了，我邻居家的狗咬了我") and opens_new_topic("好的，对了，我还想问个问题")
    assert not opens_new_topic("我们公司签了仓储合同") and not opens_new_topic("你说对了，他就是这样")
    assert is_elliptical("这种情况要不要负责？", analyzer)
    assert not is_elliptical("用人单位未依法缴纳社会保险费，劳动者可以解除劳动合同并要求经济补偿吗？", analyzer)


def test_similarity_splits_topics_without_markers(analyzer) -> None:
    msgs = _msgs("我们签了仓储合同。", "货物是电子产品。", "那丢了怎么办？")
    pairs = []

    def similarity(a: str, b: str) -> float:
        pairs.append((a, b))
        return 0.2 if "仓储" in a else 0.9

    plan = DialogueQueryBuilder(analyzer, similarity=similarity, min_similarity=0.5).build(msgs)
    assert plan.context_turns == ["货物是电子产品。"] and pairs
    kept = DialogueQueryBuilder(analyzer, similarity=similarity, min_similarity=0.1).build(msgs)
    assert kept.context_turns == ["我们签了仓储合同。", "货物是电子产品。"]


def test_lexical_parts_weigh_turns_by_recency() -> None:
    msgs = [
        {"role": "system", "content": "你是法律助手。"},
        {"role": "user", "content": "甲"},
        {"role": "assistant", "content": "答甲"},
        {"role": "user", "content": "乙"},
        {"role": "assistant", "content": "  "},
        {"role": "user", "content": "丙"},
    ]
    assert lexical_parts(msgs, 2) == [
        ("甲", LEXICAL_DECAY**2),
        ("答甲", ASSISTANT_WEIGHT * LEXICAL_DECAY**2),
        ("乙", LEXICAL_DECAY),
        ("丙", 1.0),
    ]
    assert lexical_parts(msgs, 0) == [("丙", 1.0)]


def test_a_last_turn_that_moves_on_is_searched_alone(builder: DialogueQueryBuilder) -> None:
    history = ("我们公司跟物流企业签了仓储合同，存放一批货物。", "货物在仓库里受潮损坏了。")
    last = "另外，邻居家的狗把我孩子咬伤了，狗的主人要承担什么责任？"
    for search_mode in ("hybrid", "bm25"):
        plan = builder.build(_msgs(*history, last), search_mode=search_mode)
        assert plan.queries == [last] and plan.context_turns == [] and not plan.lexical
    # The same marker before an elliptical question keeps the topic: 另外 also means "the other".
    kept = builder.build(_msgs(*history, "另外那一家仓库呢？"))
    assert kept.context_turns == list(history) and "仓储合同" in kept.queries[0]


def test_switches_topic(analyzer) -> None:
    assert switches_topic("另外，交通事故造成人身伤亡的，保险公司应当怎么赔偿？", analyzer)
    assert switches_topic("好的，还有，我妈妈住院时用的医疗器械有质量问题，厂家要不要赔偿？", analyzer)
    # 这几天 points at the present, not at an earlier turn.
    assert switches_topic("对了，这几天我九岁的孩子肝部有时会疼，查出大三阳，我该怎么办？", analyzer)
    assert not switches_topic("再问一下，那他欠的钱谁来还？", analyzer)  # leans on the earlier turns
    assert not switches_topic("换个问题，腹水。", analyzer)  # too little to stand alone
    assert not switches_topic("我还能去找另外那一个吗？", analyzer)  # 另外 inside the turn: "the other"
    assert not switches_topic("那这种合同什么时候成立？", analyzer)


def test_turn_weights_by_domain(analyzer) -> None:
    msgs = _msgs("我父亲有高血压很多年了，一直在吃降压药。", "最近还是经常头晕、头疼。", "他这个药是不是该调整一下？")
    legal = DialogueQueryBuilder(analyzer).build(msgs)
    medical = DialogueQueryBuilder(analyzer, weights=turn_weights("medical")).build(msgs)
    # The medical weights leave out the recent-turn query (it hurt on the medical tuning dialogues) ...
    assert len(legal.queries) == 2 and legal.weights == [1.0, TurnWeights().recent]
    assert medical.queries == legal.queries[:1] and medical.weights == [1.0]
    # ... weigh the turns as the default does, and stress the elliptical last turn's subject in BM25
    *turns, subject = medical.lexical[0]
    assert turns == legal.lexical[0]
    assert subject[1] == turn_weights("medical").subject_weight > 0
    assert "降压药" in subject[0].split() and len(subject[0].split()) == turn_weights("medical").subject_terms
    # A self-contained last turn names its own subject: nothing is added.
    own = _msgs("我父亲有高血压很多年了，一直在吃降压药。", "长期服用硝苯地平会引起头晕、头疼和失眠吗？")
    plan = DialogueQueryBuilder(analyzer, weights=turn_weights("medical")).build(own, search_mode="bm25")
    assert not plan.elliptical and plan.lexical == [lexical_parts(own, 1)]
    assert turn_weights("legal") == turn_weights(None) == TurnWeights()
    plain = lexical_parts(msgs, 2, TurnWeights(decay=1.0, assistant=0.0))
    assert plain == [
        (t, 1.0)
        for t in ("我父亲有高血压很多年了，一直在吃降压药。", "最近还是经常头晕、头疼。", "他这个药是不是该调整一下？")
    ]


def test_a_conversation_fuses_its_bm25_legs_lighter(builder: DialogueQueryBuilder) -> None:
    from retrieval.dialogue import LEXICAL_LEG_WEIGHT
    from retrieval.searcher import SearchOptions

    msgs = _msgs("我老公开了一家个体工商户，经营不善欠了很多钱。", "那他欠的钱谁来还？")
    plan = builder.build(msgs)
    assert plan.lexical_leg == LEXICAL_LEG_WEIGHT < 1
    # The searcher's defaults are scaled; the dense leg keeps its weight ...
    opts = plan.search_options(SearchOptions(), {"dense": 1.0, "bm25": 2.0})
    assert opts.weights == {"dense": 1.0, "bm25": 2.0 * LEXICAL_LEG_WEIGHT}
    assert opts.query_weights == plan.weights and opts.lexical == plan.lexical
    # ... a request's own leg weights win over the defaults and are scaled the same way
    opts = plan.search_options(SearchOptions(weights={"bm25": 1.0}), {"dense": 1.0, "bm25": 2.0})
    assert opts.weights == {"dense": 1.0, "bm25": LEXICAL_LEG_WEIGHT}
    # A single question's weights are left alone: the last turn alone, or a last turn that moves on.
    assert builder.build(msgs, mode="last").search_options(SearchOptions(), {"bm25": 2.0}).weights is None
    moved = _msgs(
        "我老公开了一家个体工商户，经营不善欠了很多钱。", "另外，邻居家的狗把我孩子咬伤了，狗的主人要承担什么责任？"
    )
    moved_plan = builder.build(moved)
    assert moved_plan.context_turns == [] and moved_plan.lexical_leg == 1.0
