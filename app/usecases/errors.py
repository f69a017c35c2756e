"""What a use case refuses, by kind; an adapter maps the kind to an exit code or an HTTP status, once."""

from __future__ import annotations

from retrieval.errors import UserError

__all__ = ["UseCaseError", "InvalidRequest", "NotFound", "Conflict", "Unavailable", "DomainChangeError"]


class UseCaseError(UserError):
    """A request a use case refuses, said for the user (no traceback; CLI exit 2, HTTP 400)."""


class InvalidRequest(UseCaseError):
    """The request cannot be served as it is (HTTP 422)."""


class NotFound(UseCaseError):
    """The request names something that does not exist (HTTP 404)."""


class Conflict(UseCaseError):
    """The request collides with the state of the index, e.g. another writer holds it (HTTP 409)."""


class Unavailable(UseCaseError):
    """What the request needs is not running in this process, e.g. the model or citation checking (HTTP 503)."""


class DomainChangeError(InvalidRequest):
    """An index keeps the domain it was built for."""
