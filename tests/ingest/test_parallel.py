"""The parallel pipeline writes the same index as the sequential one, and feeds the model token batches."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
from concurrent.futures import process
from pathlib import Path

import pytest

from ingest import stages
from ingest.chunkers import ChunkSettings
from ingest.pipeline import IngestOptions, ingest
from retrieval.embedders.tokens import MAX_BATCH_TOKENS, padded_tokens
from retrieval.index import Index
from tests.conftest import FIVE_DOCS, SAMPLE_STATUTES

_RUN_FIELDS = ("created_at", "updated_at")


def _version_files(index: Path) -> dict[str, bytes]:
    """The live version's manifest and its segments' files, segments named by position (names are random)."""
    version = index / (index / "CURRENT").read_text().strip()
    manifest = json.loads((version / "manifest.json").read_text())
    files = {}
    for i, entry in enumerate(manifest["segments"]):
        segment = index / "segments" / entry.pop("name")
        files |= {f"{i}/{p.relative_to(segment)}": p.read_bytes() for p in sorted(segment.rglob("*")) if p.is_file()}
    files["manifest.json"] = json.dumps({k: v for k, v in manifest.items() if k not in _RUN_FIELDS}).encode()
    return files


@pytest.fixture()
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The sample statutes plus a JSONL file large enough to be read in several parts."""
    src = tmp_path / "corpus"
    shutil.copytree(SAMPLE_STATUTES, src)
    records = [{**d, "id": f"{d['id']}-{i}", "text": d["text"] * (1 + i % 3)} for i in range(40) for d in FIVE_DOCS]
    (src / "qa.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    monkeypatch.setattr("ingest.loaders.jsonl.JSONL_PART_BYTES", 4096)
    return src


def test_workers_and_devices_write_byte_identical_indexes(
    corpus: Path, tmp_path: Path, tiny_embedder, analyzer
) -> None:
    sequential = IngestOptions(workers=1, shard_chunks=700)
    one = ingest([corpus], tmp_path / "one", tiny_embedder, analyzer, progress=False, options=sequential)
    options = IngestOptions(workers=2, devices=["cpu", "cpu"], shard_chunks=700)
    many = ingest([corpus], tmp_path / "many", tiny_embedder, analyzer, progress=False, options=options)
    assert one.chunks == many.chunks > 700 and one.documents == many.documents == 6 + 200
    assert one.chunkers == many.chunkers and many.workers == 2 and many.devices == ["cpu", "cpu"]
    a, b = _version_files(tmp_path / "one"), _version_files(tmp_path / "many")
    assert sorted(a) == sorted(b) and {"0/chunks.sqlite", "0/vectors.faiss", "manifest.json"} <= set(a)
    assert [name for name in a if a[name] != b[name]] == []


def test_summary_reports_token_batches(tmp_path: Path, tiny_embedder, analyzer) -> None:
    summary = ingest([SAMPLE_STATUTES], tmp_path / "i", tiny_embedder, analyzer, progress=False)
    spec = tiny_embedder.token_spec
    chunks = Index(tmp_path / "i").docs.get(range(summary.chunks)).values()
    lengths = [len(spec.model_input(spec.encode(c.embed_text))) for c in chunks]
    assert summary.tokens == sum(lengths)
    # Far less padding than fixed batches of 16 in document order (what plain encode without sorting pays).
    fixed = [range(i, min(i + 16, len(lengths))) for i in range(0, len(lengths), 16)]
    fixed_ratio = 1 - sum(lengths) / sum(padded_tokens(lengths, b) for b in fixed)
    assert 0 <= summary.padding_ratio < fixed_ratio / 2 and summary.max_batch_tokens == MAX_BATCH_TOKENS["cpu"]
    assert summary.batches >= summary.tokens / MAX_BATCH_TOKENS["cpu"] and summary.embed_seconds > 0
    assert summary.embed_tokens_per_second > summary.tokens_per_second > 0


def test_a_worker_crash_leaves_the_live_index(tmp_path: Path, tiny_embedder, analyzer, monkeypatch) -> None:
    index = tmp_path / "index"
    ingest([SAMPLE_STATUTES / "医师法.md"], index, tiny_embedder, analyzer, progress=False)
    before = (index / "CURRENT").read_text()

    def broken(*_args, **_kwargs):
        raise MemoryError("worker ran out of memory")

    monkeypatch.setattr(stages, "chunk_document", broken)  # the forked workers inherit it
    with pytest.raises(MemoryError):
        ingest([SAMPLE_STATUTES], index, tiny_embedder, analyzer, progress=False, options=IngestOptions(workers=2))
    assert (index / "CURRENT").read_text() == before and not list(index.glob(".staging-*"))
    assert Index(index).docs.document_ids() == ["医师法.md"]


@pytest.mark.parametrize(
    ("owner", "method", "when"),
    [
        (process._ExecutorManagerThread, "start", "before"),  # seen in CI: the thread made but not started
        (process.ProcessPoolExecutor, "_spawn_process", "after"),  # one worker forked, the next not yet
    ],
)
def test_ctrl_c_while_the_pool_starts_raises_keyboardinterrupt_and_stops_the_workers(
    analyzer, monkeypatch: pytest.MonkeyPatch, owner: type, method: str, when: str
) -> None:
    """A Ctrl-C that lands inside the first submit, while the pool forks its workers and starts its thread, must
    surface as the interrupt (the CLI's "interrupted" line), and leave no worker behind to hang the exit."""
    original = getattr(owner, method)

    def interrupted(self: object, *args: object, **kwargs: object) -> object:
        if when == "before":
            os.kill(os.getpid(), signal.SIGINT)
        result = original(self, *args, **kwargs)
        if when == "after":
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(owner, method, interrupted)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    context = stages.StageContext(settings=ChunkSettings(), analyzer=analyzer, spec=None)
    tasks = [stages.FileTask(path, path.name) for path in sorted(SAMPLE_STATUTES.glob("*.md"))]
    try:
        with pytest.raises(KeyboardInterrupt):
            list(stages.prepared_in_order(tasks, context, workers=2))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert multiprocessing.active_children() == []
