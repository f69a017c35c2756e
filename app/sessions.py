"""Server-side conversations for ``/search``'s ``session_id``: bounded, expiring, in memory."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

__all__ = ["SessionStore", "SESSION_TTL_S", "SESSION_MAX_MESSAGES", "SESSION_MAX_CHARS", "MAX_SESSIONS"]

SESSION_TTL_S = 30 * 60
"""A conversation untouched for this long is forgotten."""
SESSION_MAX_MESSAGES = 12
"""Only the most recent messages are kept (older ones are dropped first)."""
SESSION_MAX_CHARS = 8000
"""Total characters kept per conversation (older messages are dropped first)."""
MAX_SESSIONS = 10_000
"""Least-recently-used conversations beyond this are evicted."""

Message = dict[str, str]


class SessionStore:
    """Thread-safe LRU of conversations keyed by client-chosen ``session_id``.

    Not shared between server processes: run one worker, or keep the history client-side (``messages``).
    """

    def __init__(
        self,
        ttl_s: float = SESSION_TTL_S,
        max_messages: int = SESSION_MAX_MESSAGES,
        max_chars: int = SESSION_MAX_CHARS,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_messages = max_messages
        self.max_chars = max_chars
        self.max_sessions = max_sessions
        self._now = clock
        self._data: OrderedDict[str, tuple[float, list[Message]]] = OrderedDict()
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        while self._data:
            key, (stamp, _) = next(iter(self._data.items()))
            if now - stamp <= self.ttl_s and len(self._data) <= self.max_sessions:
                break
            del self._data[key]

    def _trim(self, messages: list[Message]) -> list[Message]:
        messages = messages[-self.max_messages :]
        while len(messages) > 1 and sum(len(m["content"]) for m in messages) > self.max_chars:
            messages = messages[1:]
        return messages

    def extend(self, session_id: str, messages: Sequence[Message]) -> list[Message]:
        """Append messages to a conversation (created if new or expired) and return its bounded history."""
        now = self._now()
        with self._lock:
            self._expire(now)
            _, history = self._data.pop(session_id, (now, []))
            history = self._trim([*history, *({"role": m["role"], "content": m["content"]} for m in messages)])
            self._data[session_id] = (now, history)
            self._expire(now)
            return list(history)

    def get(self, session_id: str) -> list[Message]:
        """The current history (empty if unknown or expired)."""
        with self._lock:
            self._expire(self._now())
            return list(self._data.get(session_id, (0.0, []))[1])

    def __len__(self) -> int:
        return len(self._data)
