"""Build tiny, randomly initialised Qwen3 models offline, in the exact layout of the published ones.

They exercise the real loading code (sentence-transformers ``Transformer -> Pooling(lasttoken) ->
Normalize`` with query/document prompts; a causal LM for the Qwen3 reranker) where no model hub is
reachable. Their outputs are random: they say nothing about retrieval quality.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from retrieval.prompts import INSTRUCTIONS, query_prompt

__all__ = [
    "build_tiny_tokenizer",
    "build_tiny_qwen3_embedding",
    "build_tiny_qwen3_reranker",
    "build_tiny_cross_encoder",
    "EOS_TOKEN",
]

EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [EOS_TOKEN, "<|im_start|>", "<|im_end|>"]
TINY_VOCAB_SIZE = 3000
TINY_HIDDEN = 64
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_KV_HEADS = 2
TINY_HEAD_DIM = 16
TINY_INTERMEDIATE = 128
TINY_MAX_POSITIONS = 4096
TINY_MAX_SEQ_LENGTH = 512
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


def _config(vocab_size: int, eos_id: int):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=TINY_HIDDEN,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        num_key_value_heads=TINY_KV_HEADS,
        head_dim=TINY_HEAD_DIM,
        intermediate_size=TINY_INTERMEDIATE,
        max_position_embeddings=TINY_MAX_POSITIONS,
        tie_word_embeddings=True,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        bos_token_id=eos_id,
    )


def build_tiny_qwen3_embedding(
    path: Path | str, texts: Iterable[str] = (), seed: int = 0, append_eos: bool = True
) -> Path:
    """Write a tiny random Qwen3-Embedding-shaped sentence-transformers model to ``path``.

    Args:
        path: Output directory (created).
        texts: Text to train the tokenizer on (Chinese text gives realistic token counts).
        seed: Torch seed for the random weights.

    Returns:
        ``path``, loadable with ``SentenceTransformer(path)`` or ``zhrag ingest --model path``.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import Qwen3Model

    from retrieval.embedders.sentence_transformers import st_modules

    path = Path(path)
    hf_dir = path / "_hf"
    tokenizer = build_tiny_tokenizer(texts, hf_dir, append_eos=append_eos)
    torch.manual_seed(seed)
    model = Qwen3Model(_config(len(tokenizer), tokenizer.eos_token_id))
    model.save_pretrained(str(hf_dir))
    transformer_cls, pooling_cls, normalize_cls = st_modules()
    transformer = transformer_cls(str(hf_dir), max_seq_length=TINY_MAX_SEQ_LENGTH)
    pooling = pooling_cls(TINY_HIDDEN, "lasttoken")
    st = SentenceTransformer(
        modules=[transformer, pooling, normalize_cls()],
        prompts={"query": query_prompt(INSTRUCTIONS["general"]), "document": ""},
        device="cpu",
    )
    st.save(str(path))
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
