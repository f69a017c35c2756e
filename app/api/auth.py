"""Route policy: each router (or route) declares the role its work needs with :class:`Need`.

``Need(role)`` identifies the caller by its ``Authorization: Bearer KEY`` (``app.access.Access``: 401 without
a key where one is needed, 403 for an unknown key), applies the key's rate limit (429 with ``Retry-After``)
and records the role; the knowledge base is checked where it is known (:mod:`app.api.deps`): 404 for a base
the key may not see, 403 for a role it lacks there. Routes that declare nothing — the probes ``/health`` and
``/ready``, the API reference ``/docs``, ``/redoc``, ``/openapi.json`` — answer without a key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.access import ANONYMOUS, Access, Grant, RateLimiter, Role

__all__ = ["Need", "NeedOwnHeader", "bearer_scheme", "GrantDep"]

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="A key of this server (ZHRAG_KEYS_FILE, ZHRAG_API_KEYS or ZHRAG_ADMIN_KEYS); none needed when it "
    "has no keys",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


class Need:
    """A dependency: the caller's grant, when it may call a route that needs ``role`` — checked on the base the
    route then names, except ``admin``, which is checked here (it is not per base); ``None`` for routes that
    need only a known caller (metrics, the list of bases)."""

    def __init__(self, role: Role | None) -> None:
        self.role = role

    def __call__(self, request: Request, credentials: Credentials) -> Grant:
        return self.admit(request, credentials.credentials if credentials else None)

    def admit(self, request: Request, key: str | None) -> Grant:
        """The grant of ``key`` once it passed the rate limit, recorded on the request."""
        access: Access = request.app.state.access
        grant = access.grant_for(key)
        who = grant.name if grant.name != ANONYMOUS else f"{ANONYMOUS}@{request.client.host if request.client else '?'}"
        limiter: RateLimiter = request.app.state.rate_limiter
        wait = limiter.wait_s(grant, who)
        if wait > 0:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                detail=f"over this key's {grant.rate or limiter.default_rate:g} requests per second (ZHRAG_RATE_LIMIT)",
                headers={"Retry-After": str(max(1, round(wait + 0.5)))},
            )
        if self.role == "admin":  # admin is not per base: decided here, where no base is named
            access.check_admin(grant)
        request.state.grant, request.state.caller = grant, who
        request.state.role = self.role or "read"
        return grant


class NeedOwnHeader(Need):
    """:class:`Need` for a route that documents its own ``Authorization`` handling (Dify's ``/retrieval``
    answers 403 in Dify's shape, not 401), so the schema declares no bearer scheme for it."""

    def __call__(self, request: Request) -> Grant:  # type: ignore[override]
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        return self.admit(request, key.strip() if scheme.lower() == "bearer" and key.strip() else None)


def current_grant(request: Request) -> Grant:
    """The grant :class:`Need` recorded for this request."""
    return request.state.grant


GrantDep = Annotated[Grant, Depends(current_grant)]
