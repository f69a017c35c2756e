"""Wall time of the CLI commands that compute no vector, against the interpreter's own start-up and an
``import torch`` measured in the same run (what a command that loads the model pays before anything else).

    python benchmarks/cli_startup.py --index IDX [--repeat 5] [--out docs/cli_startup.json]

Each command runs ``--repeat`` times as a fresh process; the median and the slowest are reported (seconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.bench.machine import emit_report, machine_info  # noqa: E402

ANSWER = "依据《民法典》第1165条和刑法第234条，另外网络购物法第55条也有规定。"


def _time(argv: list[str], repeat: int) -> dict[str, float]:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        runs.append(time.perf_counter() - start)
        if done.returncode not in (0, 3):
            raise SystemExit(f"{' '.join(argv)} failed: {done.stderr[-500:]}")
    return {"median_s": round(statistics.median(runs), 3), "max_s": round(max(runs), 3)}


_HOLDER = "import sys, time\nfrom retrieval.index import reserve_writer\nwith reserve_writer(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n"


def _refused_ingest(index: Path, repeat: int) -> dict[str, float]:
    """A second ``zhrag ingest`` while another process holds the index's writer lock."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(index)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        model = json.loads((index / (index / "CURRENT").read_text().strip() / "manifest.json").read_text())
        argv = [sys.executable, "-m", "app.cli", "ingest", str(ROOT / "data" / "statutes" / "医师法.md")]
        argv += ["--index", str(index), "--model", model["embedder"]["model"], "--quiet"]
        runs = []
        for _ in range(repeat):
            start = time.perf_counter()
            done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
            runs.append(time.perf_counter() - start)
            if done.returncode != 2 or "another ingest is writing" not in done.stderr:
                raise SystemExit(f"expected a refusal: {done.returncode} {done.stderr[-300:]}")
    finally:
        holder.kill()
        holder.wait()
    return {"median_s": round(statistics.median(runs), 3), "max_s": round(max(runs), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    py, cli, index = sys.executable, [sys.executable, "-m", "app.cli"], str(args.index)
    commands = {
        "python -c pass (baseline)": [py, "-c", "pass"],
        "python -c 'import torch' (baseline)": [py, "-c", "import torch"],
        "zhrag --help": [*cli, "--help"],
        "zhrag info": [*cli, "info", "--index", index],
        "zhrag list": [*cli, "list", "--index", index, "--limit", "20"],
        "zhrag citations TEXT": [*cli, "citations", ANSWER, "--index", index],
    }
    results = {name: _time(argv, args.repeat) for name, argv in commands.items()}
    results["zhrag ingest, refused (another writer holds the index)"] = _refused_ingest(args.index, args.repeat)
    chunks = json.loads((args.index / (args.index / "CURRENT").read_text().strip() / "manifest.json").read_text())
    report = {
        "index": str(args.index),
        "chunks": chunks.get("counts", {}).get("chunks"),
        "repeat": args.repeat,
        "commands": results,
        "machine": machine_info(),
    }
    emit_report(report, args.out)


if __name__ == "__main__":
    main()
