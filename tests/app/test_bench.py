"""The performance suite's commands produce the figures they promise (tiny model; says nothing about speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import EXIT_OK, EXIT_USAGE, main
from tests.conftest import SAMPLE_STATUTES


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["bench", *args]) == EXIT_OK
    return json.loads(capsys.readouterr().out)


def test_ann_compares_layouts_against_exact(capsys) -> None:
    result = _run(capsys, "--ann", "3000", "--dim", "64", "--ann-queries", "50", "--nprobe", "8")
    layouts = result["layouts"]
    assert set(layouts) == {"flat", "hnsw", "ivfpq"} and result["machine"]["cores"] >= 1
    assert layouts["flat"]["recall_at_k"] == 1.0 and layouts["flat"]["p99_speedup_vs_flat"] == 1.0
    for stats in layouts.values():
        assert 0.5 < stats["recall_at_k"] <= 1.0 and stats["p99_ms"] >= stats["p50_ms"] > 0
        assert stats["memory_mb"] > 0 and stats["build_s"] >= 0
    assert layouts["hnsw"]["memory_mb"] > layouts["flat"]["memory_mb"]  # the graph costs memory


def test_ingest_floor_with_workers_and_one(capsys, tiny_model_dir: Path) -> None:
    src = SAMPLE_STATUTES / "医师法.md"
    result = _run(
        capsys,
        "--ingest",
        str(src),
        str(SAMPLE_STATUTES / "药品管理法.md"),
        "--model",
        str(tiny_model_dir),
        "--workers",
        "2",
        "--encode-baseline",
        "8",
    )
    assert result["chunks"] > 200 and result["tokens"] > result["chunks"] and result["workers"] == 2
    assert result["floor_seconds"] > 0 and result["floor_seconds_workers_1"] > 0 and result["floor_speedup"] > 0
    pipeline = result["pipeline"]
    assert pipeline["chunks"] == result["chunks"] and pipeline["tokens"] == result["tokens"]
    assert pipeline["embed_tokens_per_second"] > 0 and 0 <= pipeline["padding_ratio"] < 0.5
    (encode,) = result["encode"]
    assert encode["batch_size"] == 8 and encode["tokens_per_second"] > 0 and "8" in result["pipeline_vs_encode"]


def test_ingest_bench_names_a_missing_path(capsys, tmp_path: Path) -> None:
    assert main(["bench", "--ingest", str(tmp_path / "nope")]) == EXIT_USAGE
    assert "nope" in capsys.readouterr().err


@pytest.mark.slow
def test_http_bench_starts_servers_and_reports_both_variants(capsys, sample_index: Path) -> None:
    result = _run(
        capsys,
        "--http",
        "--index",
        str(sample_index),
        "--concurrency",
        "1,4",
        "--requests",
        "12",
        "--http-mode",
        "dense",
        "--limit",
        "20",
    )
    for variant in ("on", "off"):
        for level in ("1", "4"):
            stats = result[variant][level]
            assert stats["errors"] == 0 and stats["ok"] == stats["requests"] >= 12 and stats["qps"] > 0
    assert set(result["microbatch_speedup"]) == {"1", "4"} and result["query_cache"] == 0


def test_update_bench_times_one_document_writes_on_a_synthetic_index(tiny_embedder, analyzer) -> None:
    from app.bench.update import ARTICLES_PER_DOCUMENT, run_update_bench, synthetic_documents

    docs = synthetic_documents(3)
    assert len({d["id"] for d in docs}) == 3 and docs[1]["text"].count("第") >= ARTICLES_PER_DOCUMENT
    result = run_update_bench(300, tiny_embedder, analyzer, writes=9)
    assert result["chunks"] == 300 and result["documents"] == 30
    for step in ("add", "replace", "delete"):
        assert result[step]["seconds"] > 0 and result[step]["mb_written"] > 0  # each published a version
    assert result["search_after"]["bm25_p50_ms"] > 0 and result["search_one_segment"]["hybrid_p50_ms"] > 0
    small = result["small_writes"]
    assert (
        small["writes"] == 9 and small["merges"] >= 1 and small["segments_after"] < 9
    )  # unmerged there would be 10 or more
