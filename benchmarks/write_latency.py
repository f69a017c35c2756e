"""How long a one-document write takes through a running server: ``POST /documents`` and
``DELETE /documents/{id}`` against a copy of an index, with a baseline checkout in the same run.

    python benchmarks/write_latency.py --index IDX [--writes 7] [--server-repo OLD] [--out FILE]

Copies IDX (the live version only) to a scratch directory, starts ``zhrag serve`` on it (its own model),
sends one warm-up write (an index of the older whole-version format is upgraded to segments by it: a
one-time cost, reported apart), then ``--writes`` times: add one small two-article document (JSON), search
for it, delete it. Reports p50 and max of each, client-side until the 200 (the version published and
served). ``--server-repo`` runs the same steps with the server of another checkout first (a baseline).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.bench.http import free_port, wait_ready  # noqa: E402
from app.bench.machine import emit_report, machine_info  # noqa: E402

KEY = "bench-admin-key"


def _document(n: int) -> dict[str, str]:
    return {
        "id": f"写入测试-{n}",
        "title": f"第{n}号通知",
        "text": f"第一条 医疗机构应当在{n}日内报告罕见病病例。\n\n第二条 未按规定报告的，由卫生健康主管部门责令改正。",
    }


def _copy_live(index: Path, target: Path) -> None:
    version = (index / "CURRENT").read_text(encoding="utf-8").strip()
    target.mkdir(parents=True)
    shutil.copytree(index / version, target / version)
    if (index / "segments").is_dir():
        shutil.copytree(index / "segments", target / "segments")
    shutil.copy2(index / "CURRENT", target / "CURRENT")


def _timed(call: Any) -> float:
    start = time.perf_counter()
    response = call()
    response.raise_for_status()
    return time.perf_counter() - start


def _run(repo: Path, index: Path, writes: int) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "ZHRAG_ADMIN_KEYS": KEY, "ZHRAG_RELOAD_INTERVAL": "0", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "app.cli", "serve", "--index", str(index), "--port", str(port)]
    server = subprocess.Popen([*command, "--log-level", "error"], cwd=repo, env=env)
    base = f"http://127.0.0.1:{port}"
    adds, deletes, searches = [], [], []
    try:
        wait_ready(base, server)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as client:
            post = {"wait": 60}
            first = _timed(lambda: client.post("/documents", params=post, json=_document(0)))
            for n in range(1, writes + 1):
                adds.append(_timed(lambda n=n: client.post("/documents", params=post, json=_document(n))))
                query = {"query": f"罕见病病例{n}日内报告", "mode": "bm25", "top_k": 3}
                searches.append(_timed(lambda q=query: client.post("/search", json=q)))
                deletes.append(_timed(lambda n=n: client.delete(f"/documents/写入测试-{n}", params=post)))
            chunks = client.get("/ready").json().get("chunks")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    return {
        "first_write_s": round(first, 2),
        "add_p50_s": round(statistics.median(adds), 3),
        "add_max_s": round(max(adds), 3),
        "delete_p50_s": round(statistics.median(deletes), 3),
        "delete_max_s": round(max(deletes), 3),
        "search_p50_ms": round(1000 * statistics.median(searches), 1),
        "chunks": chunks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--writes", type=int, default=7)
    parser.add_argument("--server-repo", type=Path, help="Also run the server of this checkout (a baseline), first")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report: dict[str, Any] = {"index": str(args.index), "writes": args.writes}
    runs = ([("baseline", args.server_repo)] if args.server_repo else []) + [("this", ROOT)]
    for name, repo in runs:
        with tempfile.TemporaryDirectory(prefix="zhrag-writes-") as scratch:
            copy = Path(scratch) / "index"
            _copy_live(args.index, copy)
            report[name] = _run(repo, copy, args.writes)
    report["machine"] = machine_info()
    emit_report(report, args.out)


if __name__ == "__main__":
    main()
