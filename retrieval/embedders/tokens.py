"""Tokenise once, batch by tokens: what lets ingest feed a model pre-tokenised, length-sorted batches.

:class:`TokenSpec` is the picklable half of a local model (its Rust tokenizer, special tokens and length
cap) that CPU worker processes use to measure chunks; the ids they measure are the ids the model gets.
:func:`plan_batches` groups sequences into batches under a padded-token budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from retrieval.text.normalize import replace_surrogates

__all__ = ["TokenSpec", "BatchPlan", "plan_batches", "padded_tokens", "default_max_batch_tokens", "MAX_BATCH_TOKENS"]

_PROBE = "检"
CHARS_PER_TOKEN_BOUND = 16
# Padded positions per forward pass. CPU (2 cores, hidden-1024 Qwen3 with 2 layers, 400 statute chunks):
# 512 -> 2,846 tokens/s, 4k -> 2,449, 16k -> 1,514: a CPU is busy at any batch size, so padding is pure
# loss; 512 was also fastest for batches of 32 queries (7.3 ms/query vs 8.9 at 4k). CUDA: a GPU needs
# large batches to be busy; 64k positions of the 0.6B in fp16 need ~2 GB of activations. Not yet tuned on
# a card: `zhrag ingest --max-batch-tokens` and `zhrag bench --ingest` measure it.
MAX_BATCH_TOKENS = {"cpu": 512, "cuda": 65536}


def default_max_batch_tokens(device: str) -> int:
    """The token budget per batch for a device kind."""
    return MAX_BATCH_TOKENS["cuda" if str(device).startswith("cuda") else "cpu"]


@dataclass(frozen=True)
class TokenSpec:
    """How texts become model input ids: ``prefix + content[:room] + suffix``.

    Attributes:
        tokenizer: A ``tokenizers.Tokenizer`` (the Rust object behind a fast HF tokenizer; picklable).
        prefix: Special ids the model's post-processor puts before the content (none for Qwen3).
        suffix: Special ids after the content (``<|endoftext|>`` for Qwen3: last-token pooling reads it).
        max_length: The model's input cap in tokens, special tokens included (``max_seq_length``).
        pad_id: Padding id.
        pad_left: Pad on the left (Qwen3) or the right.
    """

    tokenizer: Any
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    max_length: int
    pad_id: int
    pad_left: bool

    @classmethod
    def from_hf(cls, tokenizer: Any, max_length: int) -> TokenSpec:
        """Read the spec off a fast Hugging Face tokenizer; the special ids come from tokenising a probe."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer")
        bare = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
        full = tokenizer(_PROBE, add_special_tokens=True)["input_ids"]
        start = next((i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare), None)
        if start is None:  # a post-processor that rewrites the content: fall back to no specials
            start, full = 0, bare
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls(
            tokenizer=backend,
            prefix=tuple(full[:start]),
            suffix=tuple(full[start + len(bare) :]),
            max_length=int(max_length),
            pad_id=int(pad_id or 0),
            pad_left=getattr(tokenizer, "padding_side", "right") == "left",
        )

    def clip(self, text: str) -> str:
        """``text`` cut to the most characters that can still matter (no token is shorter than one character
        and few are longer than ``CHARS_PER_TOKEN_BOUND``, so a million-character input costs what a page
        does), lone surrogates replaced so the tokenizer accepts it."""
        return replace_surrogates(text[: self.max_length * CHARS_PER_TOKEN_BOUND])

    def encode(self, text: str) -> list[int]:
        """Content ids of ``text`` (no special tokens, no truncation): what chunk sizes are measured in."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` for many texts (the Rust tokenizer parallelises it)."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def model_input(self, content: Sequence[int]) -> list[int]:
        """Model input ids: specials around the content, truncated to ``max_length`` like the tokenizer does."""
        room = max(0, self.max_length - len(self.prefix) - len(self.suffix))
        return [*self.prefix, *content[:room], *self.suffix]


@dataclass(frozen=True)
class BatchPlan:
    """Batches (lists of positions into the input) and what padding they cost."""

    batches: list[list[int]]
    tokens: int
    padded: int

    @property
    def padding_ratio(self) -> float:
        """Share of the computed positions that are padding (0 = none)."""
        return 1 - self.tokens / self.padded if self.padded else 0.0


def padded_tokens(lengths: Sequence[int], batch: Sequence[int]) -> int:
    """Positions a padded batch computes: its size times its longest sequence."""
    return len(batch) * max((lengths[i] for i in batch), default=0)


def plan_batches(
    lengths: Sequence[int], max_tokens: int, max_size: int | None = None, packed: bool = False
) -> BatchPlan:
    """Group sequences longest first so that no batch pads past ``max_tokens`` positions.

    Sorting by length keeps neighbours alike, so padding is small; a sequence longer than the budget
    gets a batch of its own. Ties keep input order, so the plan depends only on the lengths.

    Args:
        lengths: Token count of each sequence.
        max_tokens: Budget of padded positions (batch size x longest sequence) per batch.
        max_size: Optional cap on sequences per batch.
        packed: The batches run unpadded (sequences packed into one): the budget counts their tokens.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i in order:
        if current:
            width = max(lengths[current[0]], 1)  # the first is the longest
            cost = total + lengths[i] if packed else (len(current) + 1) * width
            if cost > max_tokens or (max_size and len(current) >= max_size):
                batches.append(current)
                current, total = [], 0
        current.append(i)
        total += lengths[i]
    if current:
        batches.append(current)
    padded = sum(lengths) if packed else sum(padded_tokens(lengths, b) for b in batches)
    return BatchPlan(batches, int(sum(lengths)), padded)
