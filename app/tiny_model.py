"""Build tiny, randomly initialised Qwen3 models offline, in the exact layout of the published ones.

They exercise the real loading code (sentence-transformers ``Transformer -> Pooling(lasttoken) ->
Normalize`` with query/document prompts; a causal LM for the Qwen3 reranker) where no model hub is
reachable. Their outputs are random: they say nothing about retrieval quality.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from retrieval.prompts import INSTRUCTIONS, query_prompt

__all__ = [
    "ModelShape",
    "TINY",
    "QWEN3_EMBEDDING_0_6B",
    "SHAPES",
    "load_tokenizer_with_eos",
    "build_tiny_tokenizer",
    "build_tiny_qwen3_embedding",
    "build_tiny_qwen3_reranker",
    "build_tiny_cross_encoder",
    "EOS_TOKEN",
]

EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [EOS_TOKEN, "<|im_start|>", "<|im_end|>"]
TINY_VOCAB_SIZE = 3000
TINY_MAX_POSITIONS = 4096
TINY_MAX_SEQ_LENGTH = 512


@dataclass(frozen=True)
class ModelShape:
    """The architecture numbers of a Qwen3 model (vocabulary size comes from the tokenizer)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    max_positions: int = TINY_MAX_POSITIONS
    rope_theta: float = 1_000_000.0


TINY = ModelShape(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=128)
QWEN3_EMBEDDING_0_6B = ModelShape(
    hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, intermediate=3072, max_positions=32768
)
"""Qwen/Qwen3-Embedding-0.6B's published config (596M parameters with its 151,669-token vocabulary)."""
SHAPES = {"tiny": TINY, "0.6b": QWEN3_EMBEDDING_0_6B}
ANSWER_REPEATS = 200
_FALLBACK_TEXT = ["中华人民共和国民法典 第一条 为了保护民事主体的合法权益，调整民事关系，维护社会和经济秩序。"]


def build_tiny_tokenizer(texts: Iterable[str], path: Path, vocab_size: int = TINY_VOCAB_SIZE, append_eos: bool = True):
    """Train a byte-level BPE tokenizer whose post-processor appends ``<|endoftext|>`` like Qwen3's
    (``append_eos=False`` reproduces a tokenizer that lost that post-processor).

    Returns:
        The ``PreTrainedTokenizerFast`` saved at ``path``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts) or _FALLBACK_TEXT, trainer=trainer)
    eos_id = tok.token_to_id(EOS_TOKEN)
    if append_eos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {EOS_TOKEN}", pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}", special_tokens=[(EOS_TOKEN, eos_id)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        padding_side="left",
        model_max_length=TINY_MAX_POSITIONS,
    )
    fast.save_pretrained(str(path))
    return fast


def load_tokenizer_with_eos(source: Path | str, path: Path):
    """Load a Qwen tokenizer from ``source`` (``vocab.json`` + ``merges.txt`` or ``tokenizer.json``) and
    save it to ``path`` with the published model's post-processor, which appends ``<|endoftext|>``.

    Rebuilt from vocab and merges alone, Qwen3's tokenizer does not append it, and last-token pooling
    would read the last word instead.
    """
    from tokenizers import processors
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    if eos_id is None or eos_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer at {source} has no {EOS_TOKEN} token")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}", pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}", special_tokens=[(EOS_TOKEN, eos_id)]
    )
    tokenizer.pad_token = EOS_TOKEN
    tokenizer.padding_side = "left"  # as Qwen3-Embedding's tokenizer_config.json
    tokenizer.save_pretrained(str(path))
    return tokenizer


def _config(vocab_size: int, eos_id: int, shape: ModelShape = TINY):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        intermediate_size=shape.intermediate,
        max_position_embeddings=shape.max_positions,
        rope_theta=shape.rope_theta,
        tie_word_embeddings=True,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        bos_token_id=eos_id,
    )


def build_tiny_qwen3_embedding(
    path: Path | str,
    texts: Iterable[str] = (),
    seed: int = 0,
    append_eos: bool = True,
    shape: ModelShape = TINY,
    tokenizer: Path | str | None = None,
    layers: int | None = None,
) -> Path:
    """Write a random Qwen3-Embedding-shaped sentence-transformers model to ``path``.

    Args:
        path: Output directory (created).
        texts: Text to train a small tokenizer on (Chinese text gives realistic token counts).
        seed: Torch seed for the random weights.
        append_eos: Give the trained tokenizer the post-processor that appends ``<|endoftext|>``.
        shape: Architecture (``TINY`` by default; ``QWEN3_EMBEDDING_0_6B`` for throughput benchmarks).
        tokenizer: Use this tokenizer (e.g. the real Qwen3 vocab and merges) instead of training one.
        layers: Override the shape's layer count (e.g. the 0.6B's width with 2 layers on a CPU).

    Returns:
        ``path``, loadable with ``SentenceTransformer(path)`` or ``zhrag ingest --model path``.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import Qwen3Model
    from transformers.utils import logging as hf_logging

    from retrieval.embedders.sentence_transformers import st_modules

    hf_logging.disable_progress_bar()
    path = Path(path)
    hf_dir = path / "_hf"
    shape = replace(shape, layers=layers) if layers else shape
    if tokenizer is not None:
        tok = load_tokenizer_with_eos(tokenizer, hf_dir)
    else:
        tok = build_tiny_tokenizer(texts, hf_dir, append_eos=append_eos)
    torch.manual_seed(seed)
    model = Qwen3Model(_config(len(tok), tok.convert_tokens_to_ids(EOS_TOKEN), shape))
    model.save_pretrained(str(hf_dir))
    del model
    transformer_cls, pooling_cls, normalize_cls = st_modules()
    transformer = transformer_cls(str(hf_dir), max_seq_length=TINY_MAX_SEQ_LENGTH)
    pooling = pooling_cls(shape.hidden, "lasttoken")
    st = SentenceTransformer(
        modules=[transformer, pooling, normalize_cls()],
        prompts={"query": query_prompt(INSTRUCTIONS["general"]), "document": ""},
        device="cpu",
    )
    st.save(str(path))
    shutil.rmtree(hf_dir)  # the saved model holds its own copy of the weights and tokenizer
    return path


def build_tiny_qwen3_reranker(path: Path | str, texts: Iterable[str] = (), seed: int = 0) -> Path:
    """Write a tiny random Qwen3-Reranker-shaped causal LM (with "yes"/"no" tokens) to ``path``."""
    import torch
    from transformers import Qwen3ForCausalLM

    path = Path(path)
    # Repeat the answer words so the tiny BPE learns them as single tokens, as Qwen3's vocabulary has.
    tokenizer = build_tiny_tokenizer([*texts, *["yes no"] * ANSWER_REPEATS], path)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(_config(len(tokenizer), tokenizer.eos_token_id))
    model.save_pretrained(str(path))
    return path


def build_tiny_cross_encoder(path: Path | str, texts: Iterable[str] = (), seed: int = 0) -> Path:
    """Write a tiny random sequence-classification model loadable by sentence-transformers ``CrossEncoder``."""
    import torch
    from transformers import Qwen3ForSequenceClassification

    path = Path(path)
    tokenizer = build_tiny_tokenizer(texts, path)
    torch.manual_seed(seed)
    config = _config(len(tokenizer), tokenizer.eos_token_id)
    config.num_labels = 1
    Qwen3ForSequenceClassification(config).save_pretrained(str(path))
    return path
