"""Reuse the query instruction's attention keys and values across queries (prefix caching).

Every Qwen3-Embedding query starts with the same ``Instruct: {task}\\nQuery:`` tokens, often more tokens
than the question itself. The model is causal, so those tokens' keys and values do not depend on what
follows: computed once, they serve every query, and a query's forward pass covers only its own tokens.
The result equals the full forward pass up to float rounding; :meth:`PrefixCache.verify` checks that
on the loaded model before it is used.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["PrefixCache"]

log = logging.getLogger(__name__)


class PrefixCache:
    """The keys and values of a fixed token prefix, for a Hugging Face causal transformer.

    Args:
        model: The bare transformer (e.g. ``Qwen3Model``), returning ``last_hidden_state``.
        prefix: The prefix's token ids.
        device: Where the model runs.
    """

    def __init__(self, model: Any, prefix: Sequence[int], device: str) -> None:
        import torch

        self.model = model
        self.prefix = list(prefix)
        self.device = device
        # transformers 5.24 renamed ``past_key_values`` to ``cache``; pass whichever this version takes.
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([self.prefix], device=device), use_cache=True)
        self._layers = [(k, v) for k, v in _key_values(getattr(out, "cache", None) or out.past_key_values)]

    def split(self, ids: Sequence[int]) -> list[int] | None:
        """The ids after the prefix, or ``None`` when ``ids`` do not start with it (then embed them whole)."""
        n = len(self.prefix)
        if len(ids) <= n or list(ids[:n]) != self.prefix:
            return None
        return list(ids[n:])

    def _after(self, ids: Any, mask: Any, positions: Any) -> Any:
        """The model's last hidden states for ``ids`` (batch x length) following the cached prefix."""
        import torch
        from transformers import DynamicCache

        batch = ids.shape[0]
        cache = DynamicCache()
        for layer, (k, v) in enumerate(self._layers):
            cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), layer)
        with torch.inference_mode():
            return self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                use_cache=True,
                **{self._cache_arg: cache},
            ).last_hidden_state

    def last_hidden(self, suffixes: Sequence[Sequence[int]], pad_id: int) -> Any:
        """The final hidden state of ``prefix + suffix`` for each suffix (one forward pass, right-padded)."""
        import torch

        batch, width, n = len(suffixes), max(len(s) for s in suffixes), len(self.prefix)
        ids = np.full((batch, width), pad_id, dtype=np.int64)
        mask = np.zeros((batch, n + width), dtype=np.int64)
        mask[:, :n] = 1
        for row, suffix in enumerate(suffixes):
            ids[row, : len(suffix)] = suffix
            mask[row, n : n + len(suffix)] = 1
        positions = torch.arange(n, n + width).expand(batch, width)
        hidden = self._after(torch.from_numpy(ids), torch.from_numpy(mask), positions)
        last = torch.tensor([len(s) - 1 for s in suffixes], device=self.device)
        return hidden[torch.arange(batch, device=self.device), last]

    def last_hidden_packed(self, suffixes: Sequence[Sequence[int]]) -> Any:
        """Like :meth:`last_hidden`, with no padding: the suffixes run as one sequence.

        Each suffix sees the prefix and its own earlier tokens (a block-diagonal causal mask) at its own
        positions, so every padded position a batch of unequal queries would compute is saved; the
        attention over the packed sequence grows with its square, so keep it to a few hundred tokens.
        """
        import torch

        lengths = np.fromiter((len(s) for s in suffixes), dtype=np.int64, count=len(suffixes))
        total, n = int(lengths.sum()), len(self.prefix)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        segment = np.repeat(np.arange(len(lengths)), lengths)
        offset = np.arange(total) - np.repeat(starts, lengths)
        own = (segment[:, None] == segment[None, :]) & (np.arange(total)[None, :] <= np.arange(total)[:, None])
        allowed = np.concatenate([np.ones((total, n), dtype=bool), own], axis=1)
        dtype = next(self.model.parameters()).dtype
        mask = torch.zeros((1, 1, total, n + total), dtype=dtype)
        mask.masked_fill_(torch.from_numpy(~allowed)[None, None], torch.finfo(dtype).min)
        ids = torch.from_numpy(np.concatenate([np.asarray(s, dtype=np.int64) for s in suffixes]))[None]
        hidden = self._after(ids, mask, torch.from_numpy(n + offset)[None])
        ends = torch.from_numpy(starts + lengths - 1).to(self.device)
        return hidden[0, ends]


def _key_values(cache: Any) -> list[tuple[Any, Any]]:
    """(keys, values) per layer of a transformers cache, across its API versions."""
    layers = getattr(cache, "layers", None)
    if layers is not None:  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache, strict=True))
    return [(k, v) for k, v in cache]  # legacy tuple of tuples
