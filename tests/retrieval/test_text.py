from __future__ import annotations

from pathlib import Path

from retrieval.text import Analyzer, normalize_text, to_simplified


def test_normalize_fullwidth_whitespace_control() -> None:
    raw = "ＡＢＣ１２３％，　医师\r\n\n\n\n第 一条\u200b 测试\x07。\t\t结束"
    assert normalize_text(raw) == "ABC123%， 医师\n\n第 一条 测试。 结束"


def test_normalize_keeps_chinese_punctuation() -> None:
    assert normalize_text("你好？是的！（一）；：") == "你好？是的！（一）；："


def test_traditional_to_simplified() -> None:
    assert to_simplified("僱傭契約") == "雇佣契约"


def test_analyzer_traditional_query_matches_simplified(analyzer: Analyzer) -> None:
    simplified = set(analyzer("个体工商户的债务由谁承担"))
    traditional = set(analyzer("個體工商戶的債務由誰承擔"))
    assert "个体工商户" in traditional
    assert traditional == simplified


def test_analyzer_drops_stopwords_and_punctuation(analyzer: Analyzer) -> None:
    tokens = analyzer("请问，医师在执业活动中应当履行哪些义务？")
    assert "请问" not in tokens and "哪些" not in tokens and "，" not in tokens
    assert {"医师", "执业", "义务"} <= set(tokens)


def test_user_dictionary_keeps_legal_terms(analyzer: Analyzer) -> None:
    assert "无民事行为能力人" in analyzer("无民事行为能力人造成他人损害的")


def test_custom_user_dict(tmp_path) -> None:
    path = tmp_path / "dict.txt"
    path.write_text("梯子摔伤 100000\n", encoding="utf-8")
    assert "梯子摔伤" in Analyzer(user_dicts=[path])("他梯子摔伤了")


def test_block_cached_segmentation_equals_jieba_on_whole_texts() -> None:
    """The analyzer cuts clause by clause (caching each); jieba cutting the whole text gives the same words."""
    from retrieval.text import Analyzer
    from retrieval.text.analyzer import BUNDLED_USER_DICTS
    from tests.conftest import SAMPLE_STATUTES

    analyzer = Analyzer()
    texts = [p.read_text(encoding="utf-8") for p in sorted(SAMPLE_STATUTES.rglob("*.md"))]
    texts += ["第１２条 GB/T 7714-2015：α-干扰素 3.5mg/kg， 㐀䶵 ＡＢＣ 僱傭契約\n\n  末尾 ", "", "。。。", "abc def"]
    import jieba

    whole = jieba.Tokenizer()
    for name in BUNDLED_USER_DICTS:
        whole.load_userdict(str(Path(__file__).parents[2] / "retrieval" / "text" / "resources" / name))
    for text in texts:
        prepared = analyzer.prepare(text)
        assert analyzer.segment(prepared) == whole.lcut_for_search(prepared)
    again = Analyzer()
    assert [again(t) for t in texts] == [analyzer(t) for t in texts]  # cold and warm caches agree
