"""Optional LLM query rewriting through any OpenAI-compatible chat endpoint (Qwen via vLLM, DashScope, ...).

The conversation is condensed into one standalone Chinese question. Any failure (timeout, HTTP error,
empty or over-long answer) returns ``None`` and the caller falls back to the built-in query builder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

__all__ = [
    "LLMQueryRewriter",
    "CachedRewriter",
    "CONDENSE_SYSTEM_PROMPT",
    "DEFAULT_REWRITE_TIMEOUT_S",
    "render_history",
]

log = logging.getLogger(__name__)

DEFAULT_REWRITE_TIMEOUT_S = 3.0
MAX_REWRITE_TOKENS = 128
MAX_REWRITE_CHARS = 300
CONDENSE_SYSTEM_PROMPT = (
    "你是检索系统的查询改写助手。请根据对话历史，把用户最后一个问题改写成一个独立、完整、可以直接用于检索法律条文或医学资料的中文问题。"
    "补全省略的主语、对象和关键事实（人物关系、合同类型、疾病名称等）；如果最后一个问题与前面的话题无关，只改写最后一个问题本身。"
    "只输出改写后的问题，不要解释，不要回答问题。"
)
_ROLE_NAMES = {"user": "用户", "assistant": "助手"}


def render_history(messages: Sequence[Mapping[str, str]]) -> tuple[str, str]:
    """(history text, last user question) of a conversation."""
    turns = [m for m in messages if m.get("role") in _ROLE_NAMES and m.get("content", "").strip()]
    last_index = max(i for i, m in enumerate(turns) if m["role"] == "user")
    history = "\n".join(f"{_ROLE_NAMES[m['role']]}：{m['content'].strip()}" for m in turns[:last_index])
    return history, turns[last_index]["content"].strip()


class LLMQueryRewriter:
    """Condense a conversation into a standalone question with a chat model.

    Args:
        base_url: OpenAI-compatible root, e.g. ``http://localhost:8001/v1``.
        model: Chat model name (e.g. ``Qwen/Qwen3-8B``, ``qwen-plus``).
        api_key: Bearer token, if needed.
        timeout_s: Whole-request timeout; keep it short, retrieval waits for it.
        transport: An httpx transport (tests).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_REWRITE_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers, transport=transport)

    def rewrite(self, messages: Sequence[Mapping[str, str]]) -> str | None:
        """The standalone question, or ``None`` on any failure."""
        try:
            history, question = render_history(messages)
        except ValueError:
            return None
        if not history:
            return question
        payload = {
            "model": self.model,
            "temperature": 0,
            "max_tokens": MAX_REWRITE_TOKENS,
            "messages": [
                {"role": "system", "content": CONDENSE_SYSTEM_PROMPT},
                {"role": "user", "content": f"对话历史：\n{history}\n\n最后的问题：{question}\n\n改写后的独立问题："},
            ],
        }
        try:
            response = self._client.post(self.url, json=payload)
            response.raise_for_status()
            text = response.json()["choices"][0]["message"]["content"]
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
            log.warning("query rewriting failed, using the built-in builder: %s", exc)
            return None
        text = _strip_thinking(str(text)).strip().strip('"“”')
        if not text or len(text) > MAX_REWRITE_CHARS:
            log.warning("query rewriting returned an unusable answer (%d chars)", len(text))
            return None
        return text


def _strip_thinking(text: str) -> str:
    """Drop a ``<think>…</think>`` block that reasoning models (Qwen3) may emit."""
    if "</think>" in text:
        return text.split("</think>", 1)[1]
    return text


class CachedRewriter:
    """A persistent cache (SQLite) of rewrites: the same conversation, model and prompt is asked once.

    Only answers are stored; a failed call is not, so a rerun tries it again. ``hits``, ``misses`` and
    ``failures`` count what happened (``zhrag eval --rewrite`` reports them).
    """

    def __init__(self, inner: LLMQueryRewriter, path: Path | str) -> None:
        self.inner = inner
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS rewrites (key TEXT PRIMARY KEY, text TEXT NOT NULL)")
        self._lock = threading.Lock()
        self.hits = self.misses = self.failures = 0

    def _key(self, messages: Sequence[Mapping[str, str]]) -> str:
        turns = [[m.get("role", ""), m.get("content", "")] for m in messages]
        payload = json.dumps([self.inner.model, CONDENSE_SYSTEM_PROMPT, turns], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    def rewrite(self, messages: Sequence[Mapping[str, str]]) -> str | None:
        """The cached rewrite, else the model's (stored when it answers)."""
        key = self._key(messages)
        with self._lock:
            row = self._db.execute("SELECT text FROM rewrites WHERE key = ?", (key,)).fetchone()
        if row is not None:
            self.hits += 1
            return row[0]
        self.misses += 1
        text = self.inner.rewrite(messages)
        if text is None:
            self.failures += 1
            return None
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO rewrites VALUES (?, ?)", (key, text))
            self._db.commit()
        return text
