"""Resident memory of one server over several knowledge bases: one base, two with the same model, two with
different models (same run, same machine).

    python benchmarks/kb_memory.py --model DIR [--other-model DIR] [--docs PATH] [--out FILE]

Builds the bases under a temporary root (``--docs``, default the bundled 医师法, ingested with ``--model``;
the different-model base with ``--other-model``), starts ``zhrag serve --root`` over one, then two bases, waits
until ``/ready``, runs a few searches on every base, and reads the server's resident memory (``VmRSS``). The
issue's bar: two same-model bases below 1.3x one base. A model of a real size makes the point: e.g.
``zhrag tiny-model M --shape 0.6b --layers 2 --tokenizer ../shared/qwen3-tokenizer`` (0.6B's 151k x 1024
embedding table, ~0.7 GB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.bench.http import free_port, wait_ready  # noqa: E402
from app.bench.machine import emit_report, machine_info  # noqa: E402

QUESTIONS = ["医师在执业活动中应当履行哪些义务", "医师注册需要什么条件", "医疗机构泄露患者隐私"]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def _ingest(docs: Path, index: Path, model: Path, domain: str) -> None:
    argv = [sys.executable, "-m", "app.cli", "ingest", str(docs), "--index", str(index), "--model", str(model)]
    subprocess.run([*argv, "--domain", domain, "--quiet"], cwd=ROOT, check=True)


def _served_rss(root: Path, bases: list[str]) -> dict[str, float]:
    """Serve exactly ``bases`` (linked into a fresh root), search each, and read the RSS."""
    view = Path(tempfile.mkdtemp(prefix="kbs-"))
    for name in bases:
        (view / name).symlink_to(root / name, target_is_directory=True)
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ZHRAG_RELOAD_INTERVAL": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--root", str(view), "--port", str(port), "--log-level", "error"],
        cwd=ROOT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, server, timeout=600)
        with httpx.Client(timeout=120) as client:
            for name in bases:
                for q in QUESTIONS:
                    r = client.post(f"{base}/kbs/{name}/search", json={"query": q, "top_k": 5})
                    r.raise_for_status()
        time.sleep(1.0)
        return {"rss_mb": _rss_mb(server.pid)}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        shutil.rmtree(view, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--other-model", type=Path, help="A second model (default: a copy of --model, by another path)")
    parser.add_argument("--docs", type=Path, default=ROOT / "data" / "statutes" / "医师法.md")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kb-memory-"))
    other = args.other_model
    if other is None:  # the same weights under another name: a model of its own to the server
        other = root / "_models" / "other-model"
        shutil.copytree(args.model, other)
    try:
        _ingest(args.docs, root / "legal", args.model, "legal")
        _ingest(args.docs, root / "medical", args.model, "medical")  # same model, another domain
        _ingest(args.docs, root / "other", other, "legal")
        one = _served_rss(root, ["legal"])
        same = _served_rss(root, ["legal", "medical"])
        different = _served_rss(root, ["legal", "other"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {
        "model": str(args.model),
        "other_model": str(args.other_model or "a copy of the model"),
        "one_base": one,
        "two_bases_same_model": same,
        "two_bases_different_models": different,
        "same_model_ratio": round(same["rss_mb"] / one["rss_mb"], 3),
        "different_models_ratio": round(different["rss_mb"] / one["rss_mb"], 3),
        "machine": machine_info(),
    }
    emit_report(report, args.out)


if __name__ == "__main__":
    main()
