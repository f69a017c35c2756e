"""Shared fixtures: a tiny random Qwen3 embedding model built once per session, a 5-document Chinese
corpus, the bundled sample statutes and (when present) ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests build their settings explicitly: nothing from the developer's environment or .env (servers the tests
# start inherit this too).
for _name in [n for n in os.environ if n.startswith("ZHRAG_") and n != "ZHRAG_SHARED"]:
    del os.environ[_name]
os.environ["ZHRAG_ENV_FILE"] = ""
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
SAMPLE_STATUTES = DATA / "statutes"
SHARED = Path(os.environ.get("ZHRAG_SHARED", REPO.parent / "shared"))
LAWREF = SHARED / "corpora" / "lawref"
EVAL = SHARED / "eval"

needs_shared = pytest.mark.skipif(not LAWREF.is_dir(), reason="../shared is not available (a user's clone)")

# Five short Chinese documents (legal and medical) for unit tests.
FIVE_DOCS = [
    {
        "id": "d1",
        "title": "劳动合同",
        "text": "用人单位自用工之日起即与劳动者建立劳动关系。建立劳动关系，应当订立书面劳动合同。",
        "law": "劳动合同法",
    },
    {
        "id": "d2",
        "title": "医疗损害",
        "text": "患者在诊疗活动中受到损害，医疗机构或者其医务人员有过错的，由医疗机构承担赔偿责任。",
        "law": "民法典",
    },
    {
        "id": "d3",
        "title": "高血压饮食",
        "text": "高血压患者要控制食盐摄入量，每天不超过六克，多吃新鲜蔬菜水果，适当运动。",
        "law": "",
    },
    {
        "id": "d4",
        "title": "假药",
        "text": "禁止生产、销售假药。有下列情形之一的，为假药：药品所含成份与国家药品标准规定的成份不符。",
        "law": "药品管理法",
    },
    {
        "id": "d5",
        "title": "离婚财产",
        "text": "夫妻在婚姻关系存续期间所得的工资、奖金，为夫妻的共同财产，归夫妻共同所有。",
        "law": "民法典",
    },
]


def sample_texts() -> list[str]:
    """Text to train the tiny tokenizer on: the bundled statutes."""
    return [p.read_text(encoding="utf-8") for p in sorted(SAMPLE_STATUTES.rglob("*.md"))]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen3-Embedding-shaped sentence-transformers model (built once)."""
    from app.tiny_model import build_tiny_qwen3_embedding

    return build_tiny_qwen3_embedding(tmp_path_factory.mktemp("models") / "tiny-qwen3-embedding", sample_texts())


@pytest.fixture(scope="session")
def tiny_embedder(tiny_model_dir: Path):
    """The tiny model loaded through the real embedder."""
    from retrieval.embedders.sentence_transformers import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def analyzer():
    """The default BM25 analyzer."""
    from retrieval.text import default_analyzer

    return default_analyzer()


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory: pytest.TempPathFactory, tiny_embedder, analyzer) -> Path:
    """The bundled sample statutes ingested with the tiny model (read-only for tests)."""
    from ingest.pipeline import ingest

    index = tmp_path_factory.mktemp("indexes") / "sample"
    summary = ingest([SAMPLE_STATUTES], index, tiny_embedder, analyzer, progress=False)
    assert summary.chunks > 300 and not summary.skipped
    return index


@pytest.fixture()
def five_docs_jsonl(tmp_path: Path) -> Path:
    """The five-document corpus as JSONL."""
    import json

    path = tmp_path / "five.jsonl"
    path.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in FIVE_DOCS) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen3-Reranker-shaped causal LM."""
    from app.tiny_model import build_tiny_qwen3_reranker

    return build_tiny_qwen3_reranker(tmp_path_factory.mktemp("models") / "tiny-qwen3-reranker", sample_texts()[:2])


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random sequence-classification model for sentence-transformers' CrossEncoder."""
    from app.tiny_model import build_tiny_cross_encoder

    return build_tiny_cross_encoder(tmp_path_factory.mktemp("models") / "tiny-cross-encoder", sample_texts()[:2])
