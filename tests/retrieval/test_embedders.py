from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from retrieval.embedders import EmbedderError, create_embedder
from retrieval.embedders.cache import CachedEmbedder
from retrieval.embedders.openai import OpenAIEmbedder
from retrieval.embedders.sentence_transformers import SentenceTransformerEmbedder
from retrieval.prompts import INSTRUCTIONS, format_query
from retrieval.protocols import Embedder
from tests.conftest import needs_shared

TEXTS = ["医师在执业活动中履行下列义务", "禁止生产、销售假药", "高血压患者要控制食盐摄入量"]


def test_tokenizer_appends_endoftext(tiny_embedder: SentenceTransformerEmbedder) -> None:
    tok = tiny_embedder.tokenizer
    ids = tok(TEXTS[0])["input_ids"]
    assert tok.convert_ids_to_tokens(ids[-1]) == "<|endoftext|>"


def test_last_token_pooling_normalised(tiny_embedder: SentenceTransformerEmbedder) -> None:
    """The embedding equals the normalised hidden state of the final <|endoftext|> token."""
    vectors = tiny_embedder.embed_documents(TEXTS)
    assert vectors.shape == (3, tiny_embedder.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    model = tiny_embedder.model[0].auto_model
    tok = tiny_embedder.tokenizer
    with torch.no_grad():
        hidden = model(**tok(TEXTS[1], return_tensors="pt")).last_hidden_state[0, -1].numpy()
    assert np.allclose(vectors[1], hidden / np.linalg.norm(hidden), atol=1e-4)


def test_padding_does_not_change_embeddings(tiny_embedder: SentenceTransformerEmbedder) -> None:
    batch = tiny_embedder.embed_documents(TEXTS)
    single = np.vstack([tiny_embedder.embed_documents([t]) for t in TEXTS])
    assert np.allclose(batch, single, atol=1e-4)


def test_query_gets_instruction_documents_do_not(tiny_embedder: SentenceTransformerEmbedder) -> None:
    query = tiny_embedder.embed_queries(["假药"])[0]
    plain = tiny_embedder.embed_documents(["假药"])[0]
    formatted = tiny_embedder.embed_documents([format_query("假药", tiny_embedder.instruction)])[0]
    assert np.allclose(query, formatted, atol=1e-4)
    assert not np.allclose(query, plain, atol=1e-3)
    assert format_query("假药", "T") == "Instruct: T\nQuery:假药"


def test_queries_batched_after_the_cached_prefix_equal_each_query_alone(tiny_model_dir: Path) -> None:
    """Queries of unequal length share one packed forward pass after the cached instruction; each vector
    equals that query's own full forward pass (no cache, no batch)."""
    from retrieval.prompts import query_prompt

    embedder = SentenceTransformerEmbedder(str(tiny_model_dir), device="cpu", max_batch_tokens=4096)
    questions = [
        "医师",
        "患者在诊疗活动中受到损害，医疗机构是否承担赔偿责任？",
        "药品召回",
        "传染病疫情报告的时限是多久",
    ]
    batched = embedder.embed_queries(questions)
    assert embedder.reuses_query_prefix and embedder.packs_queries  # the packed path ran
    spec = embedder.token_spec
    for question, vector in zip(questions, batched, strict=True):
        ids = spec.model_input(spec.encode(query_prompt(embedder.instruction) + question))
        assert np.allclose(vector, embedder.embed_token_ids([ids])[0], atol=1e-5)


def test_domain_instruction(tiny_model_dir: Path) -> None:
    medical = SentenceTransformerEmbedder(str(tiny_model_dir), domain="medical", device="cpu")
    assert medical.instruction == INSTRUCTIONS["medical"]
    assert medical.describe()["instruction"] == INSTRUCTIONS["medical"]


def test_matryoshka_truncation(tiny_model_dir: Path, tiny_embedder: SentenceTransformerEmbedder) -> None:
    small = SentenceTransformerEmbedder(str(tiny_model_dir), dim=32, device="cpu")
    vectors = small.embed_documents(TEXTS)
    full = tiny_embedder.embed_documents(TEXTS)
    assert vectors.shape == (3, 32)
    expected = full[:, :32] / np.linalg.norm(full[:, :32], axis=1, keepdims=True)
    assert np.allclose(vectors, expected, atol=1e-4)
    with pytest.raises(EmbedderError, match="--dim"):
        SentenceTransformerEmbedder(str(tiny_model_dir), dim=10_000, device="cpu")


def test_max_seq_length_is_set(tiny_embedder: SentenceTransformerEmbedder) -> None:
    assert tiny_embedder.model.max_seq_length == tiny_embedder.max_seq_length == 1024


def test_unreachable_model_gives_actionable_error(tmp_path: Path) -> None:
    with pytest.raises(EmbedderError, match="HF_ENDPOINT"):
        SentenceTransformerEmbedder("no-such-org/no-such-model-xyz", device="cpu")


class FakeServer:
    """An OpenAI-compatible embeddings endpoint as an httpx transport."""

    def __init__(self, dim: int = 8, fail_first: int = 0, status: int = 200) -> None:
        self.dim, self.fail_first, self.status = dim, fail_first, status
        self.requests: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append({"body": body, "auth": request.headers.get("authorization")})
        if self.fail_first > 0:
            self.fail_first -= 1
            return httpx.Response(503, json={"error": "busy"})
        if self.status != 200:
            return httpx.Response(self.status, json={"error": "nope"})
        data = []
        for i, text in enumerate(body["input"]):
            rng = np.random.default_rng(abs(hash((body["model"], text))) % 2**32)
            data.append({"index": i, "embedding": rng.normal(size=self.dim).tolist()})
        return httpx.Response(200, json={"data": data[::-1]})  # out of order on purpose


def _remote(server: FakeServer, **kw) -> OpenAIEmbedder:
    kw.setdefault("retries", 2)
    return OpenAIEmbedder("http://fake/v1", "qwen3-emb", transport=httpx.MockTransport(server), **kw)


def test_every_backend_and_wrapper_keeps_the_embedder_contract(
    tiny_embedder: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    """Every member of ``retrieval.protocols.Embedder`` on every backend and every wrapper, each consistent
    with what it declares: a local model takes token ids and has a tokenizer; a remote one neither; a cache
    measures with the model's tokenizer but sends text; wrappers keep their inner model's vectors."""
    from app.bench.ingest import ZeroCostEmbedder
    from retrieval.embedders.base import EmbedderBase
    from retrieval.embedders.microbatch import MicroBatcher, QueryCache, SharedModel

    remote = _remote(FakeServer(), dim=8)
    batcher = MicroBatcher(tiny_embedder, max_wait_ms=1)
    medical = "Given a medical question, retrieve passages that answer it"
    cases = {
        "sentence-transformers": (tiny_embedder, True),
        "openai": (remote, False),
        "cache over a local model": (CachedEmbedder(tiny_embedder, tmp_path / "a.sqlite"), False),
        "cache over a server": (CachedEmbedder(remote, tmp_path / "b.sqlite"), False),
        "micro-batcher": (batcher, True),
        "query cache": (QueryCache(batcher, 16), True),
        "a base's view of a shared model": (SharedModel(batcher, medical), True),
        "zero-cost (benchmarks)": (ZeroCostEmbedder(tiny_embedder), True),
    }
    try:
        for label, (embedder, local) in cases.items():
            assert isinstance(embedder, EmbedderBase) and isinstance(embedder, Embedder), label
            queries = embedder.embed_queries(TEXTS[:2])
            assert queries.shape == (2, embedder.dim), label
            assert np.allclose(embedder.submit_queries(TEXTS[:2]).result(5), queries, atol=1e-5), label
            assert embedder.embed_documents(TEXTS[:1]).shape == (1, embedder.dim), label
            assert embedder.describe()["model"] == embedder.name and embedder.instruction, label
            assert len(embedder.count_tokens(TEXTS)) == len(TEXTS), label
            behind_a_server = embedder is remote or label == "cache over a server"
            assert embedder.takes_token_ids is local and (embedder.device == "remote") is behind_a_server, label
            spec = embedder.token_spec
            assert (spec is not None) is not behind_a_server, label
            if embedder.takes_token_ids:
                ids = [spec.model_input(spec.encode(TEXTS[0]))]
                assert embedder.embed_token_ids(ids).shape == (1, embedder.dim), label
            else:
                with pytest.raises(EmbedderError):
                    embedder.embed_token_ids([[1, 2, 3]])
            if embedder is not tiny_embedder:
                with pytest.raises(EmbedderError, match="device"):
                    embedder.on_device("cpu")
        view = cases["a base's view of a shared model"][0]
        assert view.instruction == medical and view.describe()["instruction"] == medical
        assert not np.allclose(view.embed_queries(TEXTS[:1]), tiny_embedder.embed_queries(TEXTS[:1]))
        view.close()
        assert batcher.running  # a view leaves the shared batcher to its owner
    finally:
        batcher.close()


def test_openai_embedder_batches_prefixes_and_orders(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeServer()
    emb = _remote(server, api_key="k", batch_size=2, query_model="qwen3-emb-query", dim=8)
    docs = emb.embed_documents(TEXTS)
    assert docs.shape == (3, 8) and np.allclose(np.linalg.norm(docs, axis=1), 1)
    assert [len(r["body"]["input"]) for r in server.requests] == [2, 1]
    assert server.requests[0]["auth"] == "Bearer k"
    again = emb.embed_documents(TEXTS[:1])
    assert np.allclose(again[0], docs[0])  # index order respected
    emb.embed_queries(["假药"])
    last = server.requests[-1]["body"]
    assert last["model"] == "qwen3-emb-query"
    assert last["input"][0].startswith("Instruct: ") and last["input"][0].endswith("\nQuery:假药")


def test_openai_embedder_retries_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("retrieval.embedders.openai.BACKOFF_BASE_S", 0.0)
    server = FakeServer(fail_first=2)
    assert _remote(server, dim=8).embed_documents(["x"]).shape == (1, 8)
    assert len(server.requests) == 3


def test_openai_embedder_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("retrieval.embedders.openai.BACKOFF_BASE_S", 0.0)
    with pytest.raises(EmbedderError, match="HTTP 401"):
        _remote(FakeServer(status=401), dim=8).embed_documents(["x"])
    with pytest.raises(EmbedderError, match="dimension 8, expected 16"):
        _remote(FakeServer(dim=8), dim=16).embed_documents(["x"])
    down = OpenAIEmbedder("http://127.0.0.1:9/v1", "m", retries=0, timeout_s=1.0, dim=4)
    with pytest.raises(EmbedderError, match="unreachable"):
        down.embed_documents(["x"])
    with pytest.raises(EmbedderError, match="base URL"):
        create_embedder("openai", base_url="", model="m")


def test_cache_embeds_each_text_once(tmp_path: Path) -> None:
    server = FakeServer()
    cached = CachedEmbedder(_remote(server, dim=8), tmp_path / "cache.sqlite")
    first = cached.embed_documents(TEXTS)
    calls = len(server.requests)
    second = CachedEmbedder(_remote(server, dim=8), tmp_path / "cache.sqlite").embed_documents(TEXTS[::-1])
    assert len(server.requests) == calls
    assert np.allclose(first[::-1], second)
    cached.embed_queries(TEXTS[:1])
    assert len(server.requests) == calls + 1  # queries are cached separately from documents


def test_modelscope_reference_downloads_then_loads(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    import sys
    import types

    calls: list[str] = []
    fake = types.ModuleType("modelscope")
    fake.snapshot_download = lambda model_id: calls.append(model_id) or str(tiny_model_dir)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "modelscope", fake)
    emb = SentenceTransformerEmbedder("modelscope:Qwen/Qwen3-Embedding-0.6B", device="cpu")
    assert calls == ["Qwen/Qwen3-Embedding-0.6B"]
    assert emb.name == "modelscope:Qwen/Qwen3-Embedding-0.6B" and emb.dim == 64
    assert emb.describe()["model"] == "modelscope:Qwen/Qwen3-Embedding-0.6B"


def test_modelscope_missing_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "modelscope", None)
    with pytest.raises(EmbedderError, match=r'pip install -e "\.\[modelscope\]"'):
        SentenceTransformerEmbedder("modelscope:Qwen/Qwen3-Embedding-0.6B", device="cpu")


def test_tokenizer_without_endoftext_is_refused(tmp_path: Path) -> None:
    from app.tiny_model import build_tiny_qwen3_embedding
    from tests.conftest import sample_texts

    broken = build_tiny_qwen3_embedding(tmp_path / "broken", sample_texts()[:1], append_eos=False)
    with pytest.raises(EmbedderError, match="does not append <\\|endoftext\\|>"):
        SentenceTransformerEmbedder(str(broken), device="cpu")


@needs_shared
def test_real_qwen3_tokenizer_files_without_post_processor_are_refused(tmp_path: Path) -> None:
    """../shared's Qwen3 vocab.json/merges.txt load without the <|endoftext|> post-processor."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    from retrieval.embedders.sentence_transformers import st_modules
    from tests.conftest import SHARED

    tokenizer = AutoTokenizer.from_pretrained(str(SHARED / "qwen3-tokenizer"))
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == 151643
    hf = tmp_path / "hf"
    tokenizer.save_pretrained(str(hf))
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=64,
    )
    Qwen3Model(config).save_pretrained(str(hf))
    transformer_cls, pooling_cls, normalize_cls = st_modules()
    modules = [transformer_cls(str(hf), max_seq_length=64), pooling_cls(32, "lasttoken"), normalize_cls()]
    SentenceTransformer(modules=modules, device="cpu").save(str(tmp_path / "st"))
    with pytest.raises(EmbedderError, match="endoftext"):
        SentenceTransformerEmbedder(str(tmp_path / "st"), device="cpu")

    # The published tokenizer.json appends <|endoftext|> (while the config's eos_token is <|im_end|>).
    from tokenizers import processors

    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", 151643)]
    )
    fixed = tmp_path / "fixed"
    tokenizer.save_pretrained(str(fixed))
    Qwen3Model(config).save_pretrained(str(fixed))
    modules = [transformer_cls(str(fixed), max_seq_length=64), pooling_cls(32, "lasttoken"), normalize_cls()]
    SentenceTransformer(modules=modules, device="cpu").save(str(tmp_path / "st-fixed"))
    embedder = SentenceTransformerEmbedder(str(tmp_path / "st-fixed"), device="cpu")
    assert embedder.tokenizer.eos_token == "<|im_end|>"
    assert embedder.tokenizer("医师")["input_ids"][-1] == 151643
    assert embedder.embed_documents(["医师的义务"]).shape == (1, 32)


@needs_shared
def test_real_qwen3_tokenizer_queries_are_plain_text_with_endoftext(tmp_path: Path) -> None:
    """With Qwen3's real tokenizer (which carries a chat template) queries are embedded as
    ``Instruct: …\\nQuery:{q}<|endoftext|>``: the last hidden state of exactly those ids, normalised
    (the reused instruction prefix changes nothing)."""
    from app.tiny_model import build_tiny_qwen3_embedding
    from retrieval.prompts import query_prompt
    from tests.conftest import SHARED

    path = build_tiny_qwen3_embedding(tmp_path / "m", tokenizer=SHARED / "qwen3-tokenizer")
    embedder = SentenceTransformerEmbedder(str(path), device="cpu")
    tok = embedder.tokenizer
    assert tok.chat_template  # the hazard: sentence-transformers 6 would render inputs through it
    question = "个体工商户的债务如何承担？"
    ids = tok(query_prompt(embedder.instruction) + question)["input_ids"]
    assert ids[-1] == 151643 and tok.convert_ids_to_tokens(151645) not in tok.convert_ids_to_tokens(ids)
    with torch.no_grad():
        hidden = embedder.model[0].auto_model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1].numpy()
    expected = hidden / np.linalg.norm(hidden)
    assert np.allclose(embedder.embed_queries([question])[0], expected, atol=1e-5)
    assert embedder.reuses_query_prefix  # the instruction's keys and values were reused
    doc = tok("第五十六条 个体工商户的债务，个人经营的，以个人财产承担。")["input_ids"]
    with torch.no_grad():
        hidden = embedder.model[0].auto_model(input_ids=torch.tensor([doc])).last_hidden_state[0, -1].numpy()
    got = embedder.embed_documents(["第五十六条 个体工商户的债务，个人经营的，以个人财产承担。"])[0]
    assert np.allclose(got, hidden / np.linalg.norm(hidden), atol=1e-5)


@pytest.mark.parametrize("offline", [True, False])
def test_a_model_that_cannot_be_had_fails_at_once_naming_every_way_out(monkeypatch, offline: bool) -> None:
    """Offline (or with the hub unreachable) an uncached hub id is refused before any download attempt."""
    import sentence_transformers

    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there

    def never(*_args, **_kwargs):
        raise AssertionError("sentence-transformers was asked to download")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", never)
    with pytest.raises(EmbedderError) as err:
        SentenceTransformerEmbedder("zhrag-tests/no-such-model", device="cpu")
    message = str(err.value)
    assert ("HF_HUB_OFFLINE" if offline else "127.0.0.1:9 cannot be reached") in message
    for way_out in (
        "HF_ENDPOINT=",
        "modelscope:zhrag-tests/no-such-model",
        "/path/to/no-such-model",
        "zhrag tiny-model",
    ):
        assert way_out in message


def test_a_missing_model_directory_is_named_as_such(tmp_path) -> None:
    import pytest

    from retrieval.embedders.base import EmbedderError
    from retrieval.embedders.sentence_transformers import resolve_model_path

    missing = tmp_path / "models" / "qwen3"
    with pytest.raises(EmbedderError, match=rf"model directory {missing} does not exist"):
        resolve_model_path(str(missing))
    with pytest.raises(EmbedderError, match="does not exist"):
        resolve_model_path("./no-such-model")
