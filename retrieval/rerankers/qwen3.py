"""Qwen3-Reranker: a causal LM judging "yes"/"no" under a fixed chat prompt; score = P("yes")."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["Qwen3Reranker", "DEFAULT_RERANK_INSTRUCTION", "SYSTEM_PREFIX", "ASSISTANT_SUFFIX", "format_pair"]

DEFAULT_RERANK_INSTRUCTION = "Given a Chinese legal or medical question, judge whether the passage answers it"
# The official prompt of the Qwen3-Reranker model card.
SYSTEM_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
ASSISTANT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_MAX_LENGTH = 1024
DEFAULT_BATCH = 8


def format_pair(instruction: str, query: str, document: str) -> str:
    """The user-turn body of the official prompt."""
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"


class Qwen3Reranker:
    """``Qwen/Qwen3-Reranker-0.6B`` / ``-4B`` / ``-8B`` or a local checkpoint of the same shape."""

    def __init__(
        self,
        model: str,
        device: str | None = None,
        instruction: str = DEFAULT_RERANK_INSTRUCTION,
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_size: int = DEFAULT_BATCH,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = model
        self.instruction = instruction
        self.max_length = max_length
        self.batch_size = batch_size
        self._device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
        dtype = torch.float16 if self._device.startswith("cuda") else torch.float32
        self._model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self._device).eval()
        self._yes = self._token_id("yes")
        self._no = self._token_id("no")
        self._prefix = self._tokenizer.encode(SYSTEM_PREFIX, add_special_tokens=False)
        self._suffix = self._tokenizer.encode(ASSISTANT_SUFFIX, add_special_tokens=False)

    def _token_id(self, token: str) -> int:
        token_id = self._tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self._tokenizer.unk_token_id:
            raise ValueError(f"reranker {self.name!r} has no single {token!r} token; is it a Qwen3-Reranker?")
        return int(token_id)

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """P("yes") per passage."""
        import torch

        out: list[float] = []
        budget = self.max_length - len(self._prefix) - len(self._suffix)
        for i in range(0, len(passages), self.batch_size):
            pairs = [format_pair(self.instruction, query, p) for p in passages[i : i + self.batch_size]]
            encoded = self._tokenizer(
                pairs,
                padding=False,
                truncation="longest_first",
                return_attention_mask=False,
                max_length=budget,
                add_special_tokens=False,
            )
            ids = [self._prefix + seq + self._suffix for seq in encoded["input_ids"]]
            batch = self._tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(self._device)
            with torch.no_grad():
                logits = self._model(**batch).logits[:, -1, :]
            pair = torch.stack([logits[:, self._no], logits[:, self._yes]], dim=1).float()
            out.extend(torch.log_softmax(pair, dim=1)[:, 1].exp().tolist())
        return np.asarray(out, dtype=np.float32)
