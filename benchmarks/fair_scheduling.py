"""Search latency while clients send bulk embedding requests, against the same server idle (same run).

    python benchmarks/fair_scheduling.py --index IDX [--searches 1000] [--clients 4] [--out FILE]

Starts ``zhrag serve`` on IDX (its own model) with one key per client, measures ``/search`` (hybrid) alone,
then again while ``--clients`` threads loop ``/v1/embeddings`` with 64 inputs x 2,000 characters each (the
load of issue 23). Prints p50/p99/max of the searches, how many failed (504 or other), and the bulk
throughput (texts the model embedded per second) alone and while the searches run.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.bench.http import free_port, wait_ready  # noqa: E402
from app.bench.machine import emit_report, machine_info  # noqa: E402

QUESTIONS = [
    "医师在执业活动中应当履行哪些义务",
    "销售假药要承担什么责任",
    "传染病疫情报告的时限",
    "医疗机构泄露患者隐私",
]
BULK_ALONE_S = 5.0
"""How long bulk throughput is measured with no searches, before the searches start."""
BULK_TEXT = ("医疗机构及其医务人员应当严格遵守医疗卫生管理法律、行政法规、部门规章和诊疗护理规范。" * 60)[:2000]


def _searches(base: str, n: int, key: str, phase: str) -> tuple[list[float], int, list[float]]:
    """``n`` searches, each a new question (the server's query cache never answers them): the client's
    times, the failures, and the searcher's own times (``took_ms``, without HTTP and queueing for a thread)."""
    times, failed, inside = [], 0, []
    with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
        for i in range(n):
            start = time.perf_counter()
            r = client.post(f"{base}/search", json={"query": f"{QUESTIONS[i % 4]}（{phase}{i}）", "top_k": 5})
            times.append(time.perf_counter() - start)
            failed += r.status_code != 200
            if r.status_code == 200:
                inside.append(r.json()["took_ms"] / 1000)
    return times, failed, inside


def _texts_embedded(base: str, key: str) -> float:
    """Texts the server's model has embedded so far (its ``zhrag_embed_batch_texts`` histogram's sum)."""
    body = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30).text
    return next(float(line.split()[-1]) for line in body.splitlines() if line.startswith("zhrag_embed_batch_texts_sum"))


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _summary(times: list[float], failed: int, inside: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(1000 * statistics.median(times), 1),
        "p99_ms": round(1000 * _p99(times), 1),
        "max_ms": round(1000 * max(times), 1),
        "searcher_p50_ms": round(1000 * statistics.median(inside), 1) if inside else None,
        "searcher_p99_ms": round(1000 * _p99(inside), 1) if inside else None,
        "failed": failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--searches", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--server-repo", type=Path, default=ROOT, help="Run the server from this checkout (a baseline)")
    args = parser.parse_args()
    port, keys = free_port(), [f"bench-key-{i}" for i in range(args.clients + 1)]
    env = {**os.environ, "ZHRAG_API_KEYS": ",".join(keys), "ZHRAG_RELOAD_INTERVAL": "0", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--index",
            str(args.index),
            "--port",
            str(port),
            "--log-level",
            "error",
        ],
        cwd=args.server_repo,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, server)
        _searches(base, 20, keys[-1], "预热")  # warm-up
        idle = _summary(*_searches(base, args.searches, keys[-1], "空闲"))
        stop, bulk_done, bulk_status = threading.Event(), [0], {}

        def bulk(key: str) -> None:
            sent = 0
            with httpx.Client(timeout=600, headers={"Authorization": f"Bearer {key}"}) as client:
                while not stop.is_set():
                    texts = [f"{key}第{sent}批第{i}份：{BULK_TEXT}"[:2000] for i in range(64)]  # all distinct
                    sent += 1
                    r = client.post(f"{base}/v1/embeddings", json={"input": texts})
                    bulk_status[r.status_code] = bulk_status.get(r.status_code, 0) + 1
                    bulk_done[0] += r.status_code == 200

        threads = [threading.Thread(target=bulk, args=(keys[i],)) for i in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(2.0)  # the bulk queue is full
        before, start = _texts_embedded(base, keys[-1]), time.perf_counter()
        time.sleep(BULK_ALONE_S)
        bulk_alone = (_texts_embedded(base, keys[-1]) - before) / (time.perf_counter() - start)
        before, start = _texts_embedded(base, keys[-1]), time.perf_counter()
        loaded = _summary(*_searches(base, args.searches, keys[-1], "负载"))
        seconds = time.perf_counter() - start
        bulk_with_searches = (_texts_embedded(base, keys[-1]) - before - args.searches) / seconds
        stop.set()
        for t in threads:
            t.join()
        report = {
            "index": str(args.index),
            "server_repo": str(args.server_repo),
            "searches": args.searches,
            "bulk_clients": args.clients,
            "idle": idle,
            "under_bulk_load": loaded,
            "p99_ratio": round(loaded["p99_ms"] / idle["p99_ms"], 2),
            "bulk_texts_per_s_alone": round(bulk_alone, 1),
            "bulk_texts_per_s_with_searches": round(bulk_with_searches, 1),
            "bulk_requests_done": bulk_done[0],
            "bulk_statuses": bulk_status,
            "machine": machine_info(),
        }
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    emit_report(report, args.out)


if __name__ == "__main__":
    main()
