"""Operations: a request id on every response and log line, Prometheus metrics, JSON logs.

``GET /metrics`` (Prometheus text format) counts requests by route and status, times them, reports the
served index version and chunk count, and how many texts each embedding forward pass carried.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "Metrics",
    "RequestContext",
    "request_id",
    "RequestIdFilter",
    "JsonFormatter",
    "REQUEST_ID_HEADER",
    "metrics_endpoint",
    "configure_logging",
    "histogram_quantile",
]

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = contextvars.ContextVar("zhrag_request_id", default="-")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def request_id() -> str:
    """The id of the request being handled in this context (``-`` outside requests)."""
    return _REQUEST_ID.get()


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "zhrag_requests",
            "HTTP requests by route, knowledge base, method and status",
            ["route", "kb", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "zhrag_request_seconds",
            "HTTP request latency by route and knowledge base",
            ["route", "kb"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.chunks = Gauge("zhrag_index_chunks", "Chunks in the served index version", ["kb"], registry=self.registry)
        self.version = Gauge(
            "zhrag_index_version_info",
            "The served index version of each knowledge base (value 1)",
            ["kb", "version", "model"],
            registry=self.registry,
        )
        self._served: dict[str, tuple[str, str]] = {}
        self.batch_size = Histogram(
            "zhrag_embed_batch_texts",
            "Texts per embedding forward pass (micro-batches)",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )

    def serving(self, kb: str, version: str, model: str, chunks: int) -> None:
        """Record the index version now served for ``kb``."""
        self.forget(kb)
        self.version.labels(kb=kb, version=version, model=model).set(1)
        self._served[kb] = (version, model)
        self.chunks.labels(kb=kb).set(chunks)

    def forget(self, kb: str) -> None:
        """``kb`` is no longer served (deleted, or a newer version replaces this one)."""
        if kb in self._served:
            self.version.remove(kb, *self._served.pop(kb))
        with contextlib.suppress(KeyError):
            self.chunks.remove(kb)

    def latency_summary(self, shown: Callable[[str, str], bool]) -> list[dict[str, Any]]:
        """Per route: requests and the 50th, 95th and 99th latency percentiles in ms (from the histogram's
        buckets, as Prometheus's ``histogram_quantile``), over the (route, kb) series ``shown`` admits."""
        buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        for family in self.latency.collect():
            for sample in family.samples:
                labels = sample.labels
                if sample.name.endswith("_bucket") and shown(labels["route"], labels["kb"]):
                    buckets[labels["route"]][float(labels["le"])] += sample.value
        summary = []
        for route, counts in sorted(buckets.items()):
            cumulative = sorted(counts.items())
            percentiles = {f"p{q}_ms": histogram_quantile(q / 100, cumulative) for q in (50, 95, 99)}
            summary.append(
                {
                    "route": route,
                    "requests": int(cumulative[-1][1]),
                    **{k: None if v is None else round(v * 1000, 1) for k, v in percentiles.items()},
                }
            )
        return summary

    def batch_summary(self) -> dict[str, float]:
        """Embedding forward passes so far and their mean number of texts."""
        passes = total = 0.0
        for family in self.batch_size.collect():
            for sample in family.samples:
                if sample.name.endswith("_count"):
                    passes = sample.value
                elif sample.name.endswith("_sum"):
                    total = sample.value
        return {"passes": int(passes), "mean_texts": round(total / passes, 2) if passes else 0.0}

    def response(self) -> Response:
        """The ``/metrics`` body."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class RequestContext:
    """ASGI middleware: give each request an id (the client's ``X-Request-ID`` when sane), echo it on the
    response, and count and time the request under its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        rid = given if _SANE_ID.match(given) else uuid.uuid4().hex
        token = _REQUEST_ID.set(rid)
        status = [500]
        start = time.perf_counter()

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER.encode(), rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            kb = (scope.get("state") or {}).get("kb") or ""  # set once the route knows its base (app.api.deps)
            self.metrics.requests.labels(route=route, kb=kb, method=scope["method"], status=str(status[0])).inc()
            self.metrics.latency.labels(route=route, kb=kb).observe(time.perf_counter() - start)
            _REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, request id, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", request_id()),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative ``(upper bound, count)`` buckets ending with ``+Inf``, interpolated
    linearly within its bucket as Prometheus does (a quantile in the ``+Inf`` bucket is the highest finite
    bound); ``None`` with no observations."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics``."""
    return request.app.state.metrics.response()


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Root logging for ``zhrag serve``: every line carries the request id; ``json`` writes one object a line."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    text = logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s")
    handler.setFormatter(JsonFormatter() if fmt == "json" else text)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build it tried, at every start
