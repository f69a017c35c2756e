"""One error shape for every 4xx/5xx: ``{"error": {"code", "message", "detail"}}`` (Dify's own on ``/retrieval``).

Error bodies never echo the request: a 100 MB invalid body gets a short answer, and bytes that are not
JSON cannot break the error handler itself.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["ErrorBody", "ErrorResponse", "ERROR_RESPONSES", "error_response", "install_error_handlers", "JsonOnly"]

log = logging.getLogger(__name__)

DIFY_PATH = "/retrieval"
_JSON_TYPES = ("application/json",)
_BODY_METHODS = (b"POST", b"PUT", b"PATCH")


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
    for status in (400, 401, 403, 404, 409, 413, 415, 422, 500, 503, 504)
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


def _readable(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts)


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Where and what, never the offending input."""
    return [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg")), "type": str(e.get("type"))}
        for e in exc.errors()
    ]


def install_error_handlers(app: FastAPI) -> None:
    """Map validation errors, HTTP errors and unexpected exceptions to the one error shape."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = _readable(exc)[:2000]
        if request.url.path == DIFY_PATH:
            return JSONResponse(status_code=422, content={"error_code": 422, "error_msg": message})
        return error_response(422, message, "validation_error", _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error_response(exc.status_code, str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error; the server log has the details", "internal_error")


class JsonOnly:
    """ASGI middleware: a body-carrying request to a JSON route must say ``Content-Type: application/json``
    (or ``multipart/form-data`` for uploads); anything else is 415 before any parsing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"].encode() in _BODY_METHODS:
            headers = dict(scope.get("headers") or [])
            media = headers.get(b"content-type", b"").split(b";")[0].strip().decode("latin-1").lower()
            has_body = headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers
            if has_body and not (media in _JSON_TYPES or media.endswith("+json") or media == "multipart/form-data"):
                message = f"send JSON with 'Content-Type: application/json' (got {media or 'none'})"
                if scope["path"] == DIFY_PATH:
                    response = JSONResponse(status_code=415, content={"error_code": 415, "error_msg": message})
                else:
                    response = error_response(415, message, "unsupported_media_type")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
