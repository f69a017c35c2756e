"""Use cases as plain functions over plain requests: the policy the CLI and the HTTP service share.

An adapter (``app.cli``, ``app.api``) builds the request, calls the use case and maps the kind of its
:class:`UseCaseError` to an exit code or an HTTP status; the rules themselves live here. The modules load
their machinery when called, so importing this package keeps a command's start-up fast.
"""

from app.usecases.errors import Conflict, DomainChangeError, InvalidRequest, NotFound, Unavailable, UseCaseError

__all__ = ["UseCaseError", "InvalidRequest", "NotFound", "Conflict", "Unavailable", "DomainChangeError"]
