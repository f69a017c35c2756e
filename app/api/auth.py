"""API keys: with ``ZHRAG_API_KEYS`` set, every route but ``/health`` and ``/ready`` wants ``Authorization: Bearer KEY``.

With ``ZHRAG_ADMIN_KEYS`` set, changing documents (``POST``/``DELETE /documents``, ``DELETE /jobs``) wants one of those; an
admin key is accepted everywhere else too. Keys are compared in constant time. ``/retrieval`` checks the
same keys itself, answering in Dify's shape.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import error_response

__all__ = ["RequireKey", "key_matches", "bearer", "OPEN_PATHS", "ADMIN_PREFIX"]

OPEN_PATHS = frozenset({"/health", "/ready"})
"""Probes answer without a key (a load balancer has none); they reveal no paths or data."""
SELF_CHECKED = frozenset({"/retrieval"})
ADMIN_PREFIX = ("/documents", "/jobs")
ADMIN_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def bearer(header: str | None) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header, or ``None``."""
    if not header or not header.startswith("Bearer "):
        return None
    return header.removeprefix("Bearer ").strip() or None


def key_matches(key: str, keys: Iterable[str]) -> bool:
    """Whether ``key`` is one of ``keys``, compared in constant time (every key is compared)."""
    given = key.encode()
    found = False
    for candidate in keys:
        found |= secrets.compare_digest(given, candidate.encode())
    return found


class RequireKey:
    """ASGI middleware: 401 without a Bearer key, 403 with a wrong one (or a non-admin key on a document change)."""

    def __init__(self, app: ASGIApp, keys: Iterable[str], admin_keys: Iterable[str] = ()) -> None:
        self.app = app
        self.admin_keys = tuple(k for k in admin_keys if k)
        self.keys = tuple(k for k in keys if k) + self.admin_keys

    def _needs_admin(self, scope: Scope) -> bool:
        return bool(self.admin_keys) and scope["path"].startswith(ADMIN_PREFIX) and scope["method"] in ADMIN_METHODS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS | SELF_CHECKED:
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        key = bearer(header)
        admin = self._needs_admin(scope)
        if key is None:
            response = error_response(401, "this server wants 'Authorization: Bearer <key>'", "unauthorized")
            response.headers["WWW-Authenticate"] = "Bearer"
        elif not key_matches(key, self.admin_keys if admin else self.keys):
            message = (
                "changing documents needs an admin key (ZHRAG_ADMIN_KEYS)" if admin else "that key is not accepted"
            )
            response = error_response(403, message, "forbidden")
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)
