"""``zhrag bench --http``: ``/search`` over HTTP at several concurrencies, micro-batching on and off.

It starts ``zhrag serve`` itself on a free loopback port, once per variant (``ZHRAG_MICROBATCH=1`` then
``0``, query cache off so every request reaches the model), and drives it with an async client that keeps
``c`` requests in flight. The two variants run in the same process on the same machine, so their ratio is
the figure to read; absolute numbers depend on what else the machine is doing.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from app.bench.machine import machine_info, percentile

__all__ = ["run_http_bench", "load_test", "free_port", "wait_ready", "DEFAULT_CONCURRENCY", "READY_TIMEOUT_S"]

DEFAULT_CONCURRENCY = (1, 8, 32, 64)
READY_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 120.0
WARMUP_REQUESTS = 8


def free_port() -> int:
    """A loopback port nothing listens on (for a ``zhrag serve`` a benchmark or test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _load(
    url: str, queries: Sequence[str], concurrency: int, requests: int, body: dict[str, Any]
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S) as client:

        async def worker() -> None:
            for i in counter:
                start = time.perf_counter()
                try:
                    response = await client.post(url, json={**body, "query": queries[i % len(queries)]})
                    outcome = "ok" if response.status_code == 200 else f"http_{response.status_code}"
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                if outcome == "ok":
                    latencies.append((time.perf_counter() - start) * 1000)
                else:
                    errors[outcome] = errors.get(outcome, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {
        "requests": requests,
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "seconds": round(wall, 2),
        "qps": round(len(latencies) / wall, 1) if wall else 0.0,
        "p50_ms": round(percentile(latencies, 0.5), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
    }


def load_test(
    url: str, queries: Sequence[str], concurrency: int, requests: int, body: dict[str, Any]
) -> dict[str, Any]:
    """Send ``requests`` POSTs to ``url`` keeping ``concurrency`` in flight; qps, p50, p99 and errors."""
    return asyncio.run(_load(url, queries, concurrency, requests, body))


def wait_ready(base: str, process: subprocess.Popen, log: Path | None = None, timeout: float = READY_TIMEOUT_S) -> None:
    """Return once the server at ``base`` answers ``/ready`` with 200.

    Raises:
        RuntimeError: the process exited, or was not ready in ``timeout`` s (with the end of ``log``).
    """
    tail = (lambda: log.read_text()[-2000:]) if log is not None else (lambda: "")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"zhrag serve exited with {process.returncode}: {tail()}")
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"zhrag serve was not ready after {timeout:.0f} s: {tail()}")


def _serve(index: Path, port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "app.cli", "serve", "--index", str(index), "--port", str(port)]
    command += ["--host", "127.0.0.1", "--log-level", "warning"]
    with open(log, "wb") as fh:
        return subprocess.Popen(command, env=env, stdout=fh, stderr=subprocess.STDOUT)


def run_http_bench(
    index: Path,
    queries: Sequence[str],
    concurrency: Sequence[int] = DEFAULT_CONCURRENCY,
    requests: int = 256,
    mode: str = "hybrid",
    top_k: int = 10,
    variants: Sequence[bool] = (True, False),
) -> dict[str, Any]:
    """Serve ``index`` once per micro-batching variant and load it at each concurrency.

    Args:
        index: The index to serve.
        queries: Request texts, used in turn (the server's query cache is off, so repeats still count).
        concurrency: Requests in flight per level.
        requests: Requests per level (at least 4 x the concurrency).
        mode: ``/search`` mode.
        top_k: Results per request.
        variants: Micro-batching on (``True``) and/or off, in this order.
    """
    body = {"mode": mode, "top_k": top_k}
    results: dict[str, Any] = {}
    for microbatch in variants:
        port = free_port()
        env = {**os.environ, "ZHRAG_MICROBATCH": "1" if microbatch else "0", "ZHRAG_QUERY_CACHE_SIZE": "0"}
        with tempfile.NamedTemporaryFile(prefix="zhrag-serve-", suffix=".log", delete=False) as fh:
            log = Path(fh.name)
        process = _serve(index, port, env, log)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, process, log)
            load_test(f"{base}/search", queries, 1, WARMUP_REQUESTS, body)
            levels = {}
            for c in concurrency:
                levels[str(c)] = load_test(f"{base}/search", queries, c, max(requests, 4 * c), body)
            results["on" if microbatch else "off"] = levels
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
            log.unlink(missing_ok=True)
    summary: dict[str, Any] = {"index": str(index), "mode": mode, "top_k": top_k, "query_cache": 0, **results}
    if "on" in results:
        on = results["on"]
        base_qps = on[str(concurrency[0])]["qps"]
        summary["scaling_vs_concurrency_1"] = {
            c: round(v["qps"] / base_qps, 2) if base_qps else None for c, v in on.items()
        }
    if "on" in results and "off" in results:
        summary["microbatch_speedup"] = {
            c: round(results["on"][c]["qps"] / results["off"][c]["qps"], 2) if results["off"][c]["qps"] else None
            for c in results["on"]
        }
    summary["machine"] = machine_info()
    return summary
