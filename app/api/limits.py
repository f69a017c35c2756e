"""Request limits: body size (413 before it is read whole), time (504) and clients that go away (cancelled)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import Iterator, Sequence

from fastapi import APIRouter, HTTPException, Request, status
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import JsonRoute, error_response

__all__ = ["BodyLimit", "UploadRoute", "upload_paths", "Deadline", "BulkSlots", "caller"]

log = logging.getLogger(__name__)


class UploadRoute(JsonRoute):
    """A route that takes file uploads: its body may be up to ``ZHRAG_MAX_UPLOAD_BYTES`` (:class:`BodyLimit`)."""


def upload_paths(router: APIRouter, prefixes: Sequence[str]) -> list[re.Pattern[str]]:
    """The paths of ``router``'s :class:`UploadRoute` routes as served under each of ``prefixes``."""
    return [
        compile_path(prefix + r.path)[0] for prefix in prefixes for r in router.routes if isinstance(r, UploadRoute)
    ]


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for a declared ``Content-Length`` over the limit, or a streamed body that grows past it.

    Routes declared as :class:`UploadRoute` have their own, larger limit. The middleware runs before routing,
    so it is given their paths as served (:func:`upload_paths`).
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, uploads: int | None = None, upload_paths: Sequence[re.Pattern[str]] = ()
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.uploads = max_bytes if uploads is None else uploads
        self.upload_paths = tuple(upload_paths)

    def _is_upload(self, scope: Scope) -> bool:
        return scope.get("method") == "POST" and any(p.match(scope.get("path", "")) for p in self.upload_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.uploads if self._is_upload(scope) else self.max_bytes
        if limit <= 0:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, limit)
            return
        seen = 0
        started = False

        async def counting() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        async def watching(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting, watching)
        except _TooLarge:
            if not started:
                await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        setting = "ZHRAG_MAX_UPLOAD_BYTES" if limit == self.uploads != self.max_bytes else "ZHRAG_MAX_BODY_BYTES"
        message = f"request body over {limit} bytes ({setting})"
        await error_response(413, message, "request_too_large")(scope, receive, send)


class Deadline:
    """ASGI middleware: a request gets ``timeout_s`` (504 after it) and is cancelled when its client goes away.

    Cancelling reaches the work that is awaited: embedding requests are queued in pieces, so the pieces
    not yet computed are dropped. A synchronous route already running in a worker thread finishes there;
    its answer is discarded.
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_read = asyncio.Event()
        gone: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        started = finished = timed_out = False

        async def reading() -> Message:
            if body_read.is_set():
                return await asyncio.shield(gone)  # one reader of the connection: the watcher
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_read.set()
            return message

        async def sending(message: Message) -> None:
            nonlocal started, finished
            if timed_out:
                return  # a late answer after the 504: dropped
            started = started or message["type"] == "http.response.start"
            finished = finished or (message["type"] == "http.response.body" and not message.get("more_body", False))
            await send(message)

        work = asyncio.ensure_future(self.app(scope, reading, sending))

        async def watch() -> None:
            await body_read.wait()
            message = await receive()
            if not gone.done():
                gone.set_result(message)
            if message["type"] == "http.disconnect" and not finished and not work.done():
                log.info("client went away: %s %s cancelled", scope.get("method"), scope.get("path"))
                work.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait_for(asyncio.shield(work), self.timeout_s if self.timeout_s > 0 else None)
        except asyncio.TimeoutError:
            work.cancel()
            if not started:
                timed_out = True
                message = f"the request took longer than {self.timeout_s:g} s (ZHRAG_REQUEST_TIMEOUT_S)"
                await error_response(504, message, "timeout")(scope, receive, send)
        except asyncio.CancelledError:
            if not work.cancelled():  # this request itself was cancelled (shutdown): take the work with it
                work.cancel()
                raise
        finally:
            watcher.cancel()


def caller(request: Request) -> str:
    """Who is asking: the key's name, or an anonymous caller's address (recorded by ``auth.Need``)."""
    return request.state.caller


class BulkSlots:
    """At most ``per_caller`` bulk embedding requests running per key: one client cannot queue the model full."""

    def __init__(self, per_caller: int) -> None:
        self.per_caller = per_caller
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, who: str) -> Iterator[None]:
        """A slot for ``who`` while the block runs; 429 when all of theirs are taken."""
        with self._lock:
            if self._running.get(who, 0) >= self.per_caller:
                raise HTTPException(
                    status.HTTP_429_TOO_MANY_REQUESTS,
                    detail=f"at most {self.per_caller} bulk embedding requests at a time per key (ZHRAG_MAX_BULK_PER_KEY)",
                    headers={"Retry-After": "1"},
                )
            self._running[who] = self._running.get(who, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._running[who] -= 1
                if not self._running[who]:
                    del self._running[who]
