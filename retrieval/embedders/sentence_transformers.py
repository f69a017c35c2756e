"""Local Qwen3-Embedding (or any sentence-transformers model) through sentence-transformers."""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from retrieval.embedders.base import EmbedderBase, EmbedderError, truncate_dim
from retrieval.embedders.prefix import PrefixCache
from retrieval.embedders.tokens import TokenSpec, default_max_batch_tokens, plan_batches
from retrieval.prompts import query_prompt, resolve_instruction

__all__ = [
    "SentenceTransformerEmbedder",
    "DEFAULT_MODEL",
    "DEFAULT_MAX_SEQ_LENGTH",
    "resolve_model_path",
    "model_reference",
    "st_modules",
    "Precision",
    "ModelSource",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen3-Embedding-0.6B"
# Qwen3-Embedding accepts 32K tokens; attention memory grows with it, so cap it explicitly.
DEFAULT_MAX_SEQ_LENGTH = 1024
DEFAULT_BATCH_SIZE = 16
MODELSCOPE_PREFIX = "modelscope:"
HUB_PROBE_TIMEOUT_S = 5.0
EOS_TOKEN = "<|endoftext|>"
Precision = Literal["auto", "fp32", "fp16", "bf16"]
ModelSource = Literal["huggingface", "modelscope"]
Unpadded = Literal["auto", "on", "off"]


def st_modules() -> tuple[type, type, type]:
    """``(Transformer, Pooling, Normalize)`` from whichever sentence-transformers layout is installed."""
    try:
        from sentence_transformers.base.modules import Normalize, Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Normalize, Pooling, Transformer
    return Transformer, Pooling, Normalize


def model_reference(model: str) -> str:
    """How a model is named in a manifest: a local directory by its absolute path, anything else as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


def _looks_like_path(model: str) -> bool:
    """A reference written as a path (``/…``, ``./…``, ``../…``, ``~/…``) rather than a hub id ``ORG/NAME``."""
    return model.startswith(("/", "./", "../", "~")) or model.count("/") > 1 or "\\" in model


def resolve_model_path(model: str, source: ModelSource = "huggingface") -> str:
    """Map a model reference to what ``SentenceTransformer`` loads.

    A local directory is used as it is. ``modelscope:ORG/NAME`` (or ``source="modelscope"``) downloads
    from ModelScope first. Anything else is a Hugging Face hub id (``HF_ENDPOINT`` selects a mirror).

    A hub id already in the local cache loads from there; one that is not is only downloaded when the
    hub answers within seconds (no minute of retries offline).

    Raises:
        EmbedderError: when ModelScope is asked for but not installed, or the model is neither cached nor
            reachable (the message names every way out).
    """
    if Path(model).expanduser().is_dir():
        return model_reference(model)
    if _looks_like_path(model):
        raise EmbedderError(f"model directory {model} does not exist (a local model is a directory with config.json)")
    if model.startswith(MODELSCOPE_PREFIX) or source == "modelscope":
        model_id = model.removeprefix(MODELSCOPE_PREFIX)
        try:
            from modelscope import snapshot_download
        except ImportError as exc:
            raise EmbedderError(
                'ModelScope download needs: pip install -e ".[modelscope]" (in a zhrag checkout)'
            ) from exc
        return snapshot_download(model_id)
    cached = _hub_cache(model)
    if cached is not None:
        return cached
    problem = "HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE") == "1" else _unreachable(_hub_endpoint())
    if problem:
        raise EmbedderError(unavailable_message(model, f"it is not in the local Hugging Face cache and {problem}"))
    return model


def unavailable_message(model: str, why: str) -> str:
    """What to do when ``model`` cannot be loaded: every way zhrag can get a model without the hub."""
    name = model.rsplit("/", 1)[-1]
    return (
        f"cannot load embedding model {model!r}: {why}. Use a mirror (HF_ENDPOINT=https://hf-mirror.com), "
        f'ModelScope (--model modelscope:{model}, after pip install -e ".[modelscope]"), or a downloaded copy '
        f"(--model /path/to/{name}); for an offline smoke test, a tiny random model: "
        "zhrag tiny-model /tmp/tiny, then --model /tmp/tiny (or ZHRAG_MODEL=/tmp/tiny)"
    )


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _hub_cache(model: str) -> str | None:
    """The model's directory in the local Hugging Face cache, if it is complete enough to load."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        return None
    try:
        return snapshot_download(model, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _unreachable(endpoint: str, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why ``endpoint`` cannot be reached (``None`` when it answers a TCP connection in time)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"{endpoint} cannot be reached ({exc.strerror or exc})"


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _check_last_token_pooling(st_model: Any, name: str) -> None:
    """Last-token pooling must land on ``<|endoftext|>``, which Qwen3's tokenizer appends itself.

    A tokenizer that lost that post-processor (e.g. rebuilt from vocab.json/merges.txt) makes the model
    embed the last *word* instead: silently wrong vectors. Refuse to load such a model.
    """
    lasttoken = any(getattr(m, "pooling_mode", None) == "lasttoken" for m in st_model)
    tokenizer = getattr(st_model, "tokenizer", None)
    if not lasttoken or tokenizer is None:
        return
    # Qwen3-Embedding appends <|endoftext|> (its eos_token in the config is <|im_end|>); accept either.
    endings = {tokenizer.convert_tokens_to_ids(EOS_TOKEN), tokenizer.eos_token_id} - {None, tokenizer.unk_token_id}
    if not endings:
        return
    ids = tokenizer("检查")["input_ids"]
    if not ids or ids[-1] not in endings:
        raise EmbedderError(
            f"the tokenizer of {name!r} does not append {EOS_TOKEN}, but the model pools the last token: "
            "embeddings would be wrong. Use the model's published tokenizer.json (its post-processor appends it)."
        )


def flash_attn_available() -> bool:
    """Whether the ``flash-attn`` package (varlen kernels for unpadded batches) is installed."""
    return importlib.util.find_spec("flash_attn") is not None


def _device(device: str | None) -> str:
    if device:
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


class SentenceTransformerEmbedder(EmbedderBase):
    """Qwen3-Embedding via sentence-transformers: last-token pooling and normalisation come from the model.

    Args:
        model: Hub id, ``modelscope:ORG/NAME``, or a local directory.
        instruction: Query task instruction; ``None`` uses the domain's default.
        domain: ``legal`` | ``medical`` | ``general`` (picks the default instruction).
        dim: Matryoshka output dimension (truncate, then re-normalise); ``None`` keeps the full size.
        max_seq_length: Token cap for inputs (set explicitly: the model allows 32K).
        device: ``cuda``, ``cpu``, ...; auto-detected when ``None``.
        precision: ``auto`` uses fp16 on CUDA and fp32 on CPU.
        batch_size: Encode batch size.
        source: ``huggingface`` or ``modelscope`` for hub ids.
        unpadded: Run pre-tokenised batches packed into one sequence without padding (varlen
            attention). ``auto`` does so on CUDA when ``flash-attn`` is installed (the model is then
            loaded with FlashAttention-2); ``on`` forces it (on other attention kernels it is correct
            but not faster), ``off`` pads.
        prefix_cache: Compute the query instruction's keys and values once and reuse them for every
            query (checked against the full forward pass on first use; off if they disagree).
        max_batch_tokens: Padded tokens per forward pass (default by device).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        instruction: str | None = None,
        domain: str | None = None,
        dim: int | None = None,
        max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
        device: str | None = None,
        precision: Precision = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        source: ModelSource = "huggingface",
        unpadded: Unpadded = "auto",
        prefix_cache: bool = True,
        max_batch_tokens: int | None = None,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = model_reference(model)
        path = resolve_model_path(model, source)
        self.instruction = resolve_instruction(instruction, domain)
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self._device = _device(device)
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        _quiet_transformers()
        flash = self._device.startswith("cuda") and flash_attn_available() and unpadded != "off"
        self.unpadded = unpadded == "on" or (unpadded == "auto" and flash)
        model_kwargs = {"attn_implementation": "flash_attention_2"} if flash else {}
        if flash and precision in ("auto", "fp16"):
            import torch

            model_kwargs["dtype"] = torch.float16  # FlashAttention-2 needs half precision at load
        try:
            self._model = SentenceTransformer(
                path, device=self._device, local_files_only=offline, model_kwargs=model_kwargs or None
            )
        except Exception as exc:  # noqa: BLE001 - any load failure gets the same actionable message
            raise EmbedderError(unavailable_message(model, str(exc).split("\n")[0])) from exc
        self._model.max_seq_length = max_seq_length
        if self._device.startswith("cuda") and precision in ("auto", "fp16"):
            self._model.half()
        elif precision == "bf16":
            import torch

            self._model.to(torch.bfloat16)
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        full = get_dim()
        if full is None:
            raise EmbedderError(f"model {model!r} does not report an embedding dimension")
        if dim is not None and not 0 < dim <= full:
            raise EmbedderError(f"--dim {dim} is outside 1..{full} for model {model!r}")
        self._full_dim = full
        self._dim = dim
        _check_last_token_pooling(self._model, model)
        self._spec: TokenSpec | None = None
        self.max_batch_tokens = max_batch_tokens or default_max_batch_tokens(self._device)
        self._prefixes: dict[str, PrefixCache | None] = {} if prefix_cache and _prefix_cacheable(self._model) else None

    @property
    def device(self) -> str:
        """The device the model runs on."""
        return self._device

    takes_token_ids = True

    @property
    def model(self) -> Any:
        """The loaded ``SentenceTransformer`` (e.g. to time its own ``encode`` as a baseline)."""
        return self._model

    def on_device(self, device: str) -> SentenceTransformerEmbedder:
        """A replica of this embedder on another device (one per GPU for multi-device ingest)."""
        if device == self._device:
            return self
        replica = copy.copy(self)
        replica._model = copy.deepcopy(self._model).to(device)
        replica._device = device
        if replica._prefixes is not None:  # cached keys/values live on the original device
            replica._prefixes = {}
        return replica

    @property
    def token_spec(self) -> TokenSpec:
        """How this model tokenises (picklable, for ingest's worker processes)."""
        if self._spec is None:
            self._spec = TokenSpec.from_hf(self.tokenizer, self.max_seq_length)
        return self._spec

    def embed_token_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Embed pre-tokenised documents (ids from :attr:`token_spec` ``.model_input``) in one forward pass."""
        import torch

        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        features = _packed(batch) if self.unpadded else _padded(batch, self.token_spec)
        features = {k: v.to(self._device, non_blocking=True) if torch.is_tensor(v) else v for k, v in features.items()}
        with torch.inference_mode():
            out = self._model(features)["sentence_embedding"]
        return truncate_dim(out.float().cpu().numpy(), self._dim)

    @property
    def dim(self) -> int:
        """Output dimension (after Matryoshka truncation)."""
        return self._dim or self._full_dim

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (for chunk sizes)."""
        return self._model.tokenizer

    def _encode(self, texts: Sequence[str], prompt: str) -> np.ndarray:
        """Tokenise ``prompt + text`` exactly as the model was trained (plain text, ``<|endoftext|>`` appended
        by the tokenizer) and embed in token-budget batches.

        sentence-transformers' own ``encode`` is not used: from version 6 it renders inputs through the
        tokenizer's chat template when there is one (Qwen3's has), which is not Qwen3-Embedding's format.
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        spec = self.token_spec
        ids = [spec.model_input(x) for x in spec.encode_batch([spec.clip(prompt + t) for t in texts])]
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        prefix = self._prefix(prompt) if prompt else None
        suffixes = [prefix.split(i) for i in ids] if prefix else [None] * len(ids)
        short = [i for i, sfx in enumerate(suffixes) if sfx is not None]
        whole = [i for i, sfx in enumerate(suffixes) if sfx is None]
        if short:
            assert prefix is not None
            lengths = [len(suffixes[i]) for i in short]  # type: ignore[arg-type]
            plan = plan_batches(
                lengths, self.max_batch_tokens, None if self.packs_queries else self.batch_size, self.packs_queries
            )
            for batch in plan.batches:
                rows = [short[j] for j in batch]
                hidden = self._after_prefix(prefix, [suffixes[r] for r in rows])  # type: ignore[misc]
                out[rows] = truncate_dim(hidden.float().cpu().numpy(), self._dim)
        if whole:
            plan = plan_batches([len(ids[i]) for i in whole], self.max_batch_tokens, self.batch_size)
            for batch in plan.batches:
                rows = [whole[j] for j in batch]
                out[rows] = self.embed_token_ids([ids[r] for r in rows])
        return out

    @property
    def reuses_query_prefix(self) -> bool:
        """Whether an instruction's keys and values have been computed once and reused for queries (it is
        off for a model or transformers version where reuse disagrees with the full forward pass)."""
        return any(cache is not None for cache in (self._prefixes or {}).values())

    @property
    def packs_queries(self) -> bool:
        """Whether a batch of queries runs as one unpadded sequence after the cached instruction."""
        # On a CPU every padded position costs compute: pack a batch's queries into one unpadded sequence.
        # A GPU pads almost for free at these sizes, and a packed mask's attention grows quadratically.
        return not self._device.startswith("cuda")

    def _after_prefix(self, prefix: PrefixCache, suffixes: Sequence[Sequence[int]]) -> Any:
        """Final hidden states of ``prefix + suffix`` for each suffix, packed or padded."""
        if self.packs_queries:
            return prefix.last_hidden_packed(suffixes)
        return prefix.last_hidden(suffixes, self.token_spec.pad_id)

    def _prefix(self, prompt: str) -> PrefixCache | None:
        """The cached keys and values of ``prompt`` (built and checked on first use), if enabled."""
        if self._prefixes is None:
            return None
        if prompt not in self._prefixes:
            self._prefixes[prompt] = self._build_prefix(prompt)
        return self._prefixes[prompt]

    def _build_prefix(self, prompt: str) -> PrefixCache | None:
        spec = self.token_spec
        # Two probes of different lengths, so a packed batch's mask and positions are checked too.
        probes = [spec.model_input(spec.encode(prompt + text)) for text in ("检查医师的执业义务", "患者隐私")]
        try:
            cache = PrefixCache(self._model[0].auto_model, spec.encode(prompt), self._device)
            suffixes = [cache.split(probe) for probe in probes]
            if any(suffix is None for suffix in suffixes):
                return None
            hidden = self._after_prefix(cache, suffixes)  # type: ignore[arg-type]
            reused = truncate_dim(hidden.float().cpu().numpy(), self._dim)
        except Exception as exc:  # noqa: BLE001 - an unsupported model or transformers version: embed whole
            log.warning("query prefix caching is off for %s: %s", self.name, exc)
            return None
        full = np.concatenate([self.embed_token_ids([probe]) for probe in probes])
        tolerance = 1e-4 if next(self._model.parameters()).dtype == _float32() else 2e-2
        if not np.allclose(reused, full, atol=tolerance):
            log.warning("query prefix caching is off for %s: it disagrees with the full forward pass", self.name)
            return None
        return cache

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embed passages with no instruction."""
        return self._encode(texts, "")

    def embed_queries(self, texts: Sequence[str], instruction: str | None = None) -> np.ndarray:
        """Embed queries as ``Instruct: {task}\\nQuery:{query}``; ``instruction`` replaces this embedder's task
        (knowledge bases of other domains sharing the loaded model)."""
        return self._encode(texts, query_prompt(instruction or self.instruction))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens the model reads for each text as a document (special tokens included, cut at ``max_seq_length``)."""
        if not texts:
            return []
        spec = self.token_spec
        return [len(spec.model_input(ids)) for ids in spec.encode_batch([spec.clip(t) for t in texts])]

    def describe(self) -> dict[str, Any]:
        """Manifest entry."""
        return {
            "backend": "sentence-transformers",
            "model": self.name,
            "dim": self.dim,
            "instruction": self.instruction,
            "max_seq_length": self.max_seq_length,
            "truncate_dim": self._dim,
        }


def _float32() -> Any:
    import torch

    return torch.float32


def _prefix_cacheable(model: Any) -> bool:
    """Prefix reuse needs the plain pipeline: a causal transformer, last-token pooling, optional Normalize."""
    names = [type(m).__name__ for m in model]
    pooling = model[1] if len(model) > 1 else None
    return (
        names[:2] == ["Transformer", "Pooling"]
        and getattr(pooling, "pooling_mode", None) == "lasttoken"
        and all(n == "Normalize" for n in names[2:])
        and hasattr(getattr(model[0], "auto_model", None), "config")
    )


def _padded(batch: Sequence[Sequence[int]], spec: TokenSpec) -> dict[str, Any]:
    """``input_ids``/``attention_mask`` padded on the tokenizer's side (Qwen3: left)."""
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = np.full((len(batch), width), spec.pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, ids in enumerate(batch):
        span = slice(width - len(ids), width) if spec.pad_left else slice(0, len(ids))
        input_ids[row, span] = ids
        mask[row, span] = 1
    return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}


def _packed(batch: Sequence[Sequence[int]]) -> dict[str, Any]:
    """The batch as one unpadded sequence with per-sequence positions and boundaries (varlen attention).

    Transformers' attention reads the boundaries from ``position_ids`` (restarting at 0) or the
    ``cu_seq_lens_*`` arguments; sentence-transformers' pooling reads ``cu_seq_lens_q``.
    """
    import torch

    lengths = np.fromiter((len(ids) for ids in batch), dtype=np.int64, count=len(batch))
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    input_ids = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in batch])
    positions = np.arange(bounds[-1], dtype=np.int64) - np.repeat(bounds[:-1], lengths)
    cu = torch.from_numpy(bounds.astype(np.int32))
    longest = int(lengths.max())
    return {
        "input_ids": torch.from_numpy(input_ids)[None],
        "position_ids": torch.from_numpy(positions)[None],
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": longest,
        "max_length_k": longest,
    }
