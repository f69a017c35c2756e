"""One error shape for every 4xx/5xx: ``{"error": {"code", "message", "detail"}}``.

A router may declare another shape through its route class (Dify's ``/retrieval`` does, see
``routes_dify.DifyRoute``). Error bodies never echo the request: a 100 MB invalid body gets a short answer,
and bytes that are not JSON cannot break the error handler itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from app.access import AccessDenied
from app.usecases.documents import UnsupportedFile
from app.usecases.errors import Conflict, InvalidRequest, NotFound, Unavailable, UseCaseError
from retrieval.errors import UserError
from retrieval.metadata_filter import FIELD_PATTERN

__all__ = [
    "ErrorBody",
    "ErrorResponse",
    "ERROR_RESPONSES",
    "error_response",
    "install_error_handlers",
    "http_status",
    "JsonRoute",
    "readable",
    "BLANK",
]

log = logging.getLogger(__name__)

_BODY_METHODS = ("POST", "PUT", "PATCH")
_HTTP_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"})
_VALUE_ERROR = "Value error, "
BLANK = r"[^\s\x1c-\x1f\x85]"
"""The pattern of a text that must hold more than spaces: the schema says it, so clients agree. The same set
as Python's ``str.strip()`` in every regex dialect (Python's ``\\s`` also takes ``\x1c-\x1f``, Rust's and
JavaScript's do not; JavaScript's does not take ``\x85``)."""


class ErrorBody(BaseModel):
    """What went wrong."""

    code: str
    message: str
    detail: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    """Every error zhrag answers (except Dify's ``/retrieval``, which keeps Dify's shape)."""

    error: ErrorBody


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": HTTPStatus(status).phrase}
    for status in (400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 503, 504)
}
"""OpenAPI ``responses`` for routers: the error shape, documented."""


def _code(status: int) -> str:
    if status == 422:  # "Unprocessable Entity/Content" depending on the Python version
        return "validation_error"
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def error_response(
    status: int, message: str, code: str | None = None, detail: list[dict[str, Any]] | None = None
) -> JSONResponse:
    """An error in zhrag's shape."""
    body = ErrorBody(code=code or _code(status), message=message, detail=detail)
    return JSONResponse(status_code=status, content={"error": body.model_dump(exclude_none=True)})


def _message(err: dict[str, Any]) -> str:
    """Pydantic's message in plain words: no "Value error, " prefix, a blank text or a bad field said as such."""
    pattern = (err.get("ctx") or {}).get("pattern") if err.get("type") == "string_pattern_mismatch" else None
    if pattern == BLANK:
        return "must not be empty or only spaces"
    if pattern == FIELD_PATTERN:
        return "invalid filter field name (letters, digits, _ . - and CJK, at most 64)"
    return str(err.get("msg", "")).removeprefix(_VALUE_ERROR)


def _where(loc: tuple[Any, ...]) -> str:
    """``filters.law`` from pydantic's location, without the body, union member labels and ``~`` tags."""
    shown = [str(p) for p in loc if p != "body" and p != "[key]"]
    return ".".join(p for p in shown if not p.startswith("~") and "[" not in p and not p.startswith("constrained-"))


def readable(exc: RequestValidationError) -> str:
    """Every problem of a request, one line: ``field: what is wrong; …``."""
    parts = []
    for err in exc.errors():
        loc = _where(tuple(err.get("loc", ())))
        parts.append(f"{loc}: {_message(err)}" if loc else _message(err))
    return "; ".join(dict.fromkeys(parts))[:2000]


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Where and what, never the offending input."""
    return [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": _message(e), "type": str(e.get("type"))}
        for e in exc.errors()
    ]


def _allowed_methods(request: Request) -> str | None:
    """Every method the API documents for this path (Starlette names only the first matching route's)."""
    for template, item in request.app.openapi()["paths"].items():
        if compile_path(template)[0].match(request.url.path):
            return ", ".join(sorted(method.upper() for method in item if method.upper() in _HTTP_METHODS))
    return None


_STATUS_OF_KIND: tuple[tuple[type[UseCaseError], int], ...] = (
    (UnsupportedFile, 415),
    (InvalidRequest, 422),
    (NotFound, 404),
    (Conflict, 409),
    (Unavailable, 503),
    (UseCaseError, 400),
)


def http_status(error: type[BaseException]) -> int:
    """The HTTP status of a kind of error: a use case's refusal by its kind (the most specific first), another
    error the client can fix (a damaged index, …) 422, a fault 500."""
    for kind, status in _STATUS_OF_KIND:
        if issubclass(error, kind):
            return status
    return 422 if issubclass(error, UserError) else 500


def install_error_handlers(app: FastAPI) -> None:
    """Map validation errors, use-case refusals, HTTP errors and unexpected exceptions to the one error shape."""

    @app.exception_handler(UseCaseError)
    async def _refused(_: Request, exc: UseCaseError) -> JSONResponse:
        return error_response(http_status(type(exc)), str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, readable(exc), "validation_error", _validation_detail(exc))

    @app.exception_handler(AccessDenied)
    async def _denied(_: Request, exc: AccessDenied) -> JSONResponse:
        response = error_response(exc.status, exc.message)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error_response(exc.status_code, str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        allowed = _allowed_methods(request) if exc.status_code == 405 else None
        if allowed:
            response.headers["Allow"] = allowed
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error; the server log has the details", "internal_error")


class JsonRoute(APIRoute):
    """A route whose body must be JSON (``Content-Type: application/json`` or ``+json``; ``multipart/form-data``
    for uploads): anything else is 415 before the body is read. Every router of the API uses it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def json_only(request: Request) -> Response:
            if request.method in _BODY_METHODS:
                media = request.headers.get("content-type", "").split(";")[0].strip().lower()
                has_body = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
                if has_body and not (
                    media == "application/json" or media.endswith("+json") or media == "multipart/form-data"
                ):
                    message = f"send JSON with 'Content-Type: application/json' (got {media or 'none'})"
                    raise HTTPException(415, detail=message)
            return await handler(request)

        return json_only
