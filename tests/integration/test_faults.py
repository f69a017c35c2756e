"""Faults a supervisor sees (``python -m pytest -m slow``): a command killed with ``kill -9`` leaves no
worker behind, and an interrupted ingest exits with its documented status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retrieval.index import current_version
from tests.conftest import REPO, SAMPLE_STATUTES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads processes from /proc"),
]


def _corpus(folder: Path, copies: int) -> Path:
    """``copies`` distinct versions of the sample statutes (a run long enough to be caught mid-way)."""
    folder.mkdir()
    for copy in range(copies):
        for path in sorted(SAMPLE_STATUTES.rglob("*.md")):
            text = path.read_text(encoding="utf-8")
            (folder / f"{path.stem}-{copy}.md").write_text(text.replace("\n", f"\n<!-- {copy} -->\n", 1), "utf-8")
    return folder


def _stderr_or_stacks(process: subprocess.Popen, timeout: float) -> str:
    """The command's stderr once it ends; if it is still running after ``timeout``, fail with every
    thread's stack (it dumps them on SIGUSR1) instead of a bare timeout."""
    try:
        return process.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)
        time.sleep(3)
        process.kill()
        _, err = process.communicate(timeout=30)
        raise AssertionError(f"still running {timeout} s after the signal; its threads:\n{err[-8000:]}") from None


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _ingest(corpus: Path, index: Path, model: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "ingest", str(corpus), "--index", str(index), "--model", str(model), *extra],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _workers_started(writer: subprocess.Popen, count: int) -> list[int]:
    deadline = time.monotonic() + 120
    while len(_children(writer.pid)) < count and writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _children(writer.pid)
    assert len(workers) >= count, "the ingest finished before its workers were seen"
    return workers


def test_kill_9_of_an_ingest_leaves_no_worker_running(tmp_path: Path, tiny_model_dir: Path) -> None:
    """What the OOM killer does: the parent dies at once; its workers follow within seconds instead of
    waiting forever on a pipe nobody reads."""
    corpus = _corpus(tmp_path / "corpus", copies=20)
    writer = _ingest(corpus, tmp_path / "index", tiny_model_dir, "--workers", "2", "--quiet")
    workers = _workers_started(writer, 2)
    time.sleep(1.5)  # files are being prepared and embedded
    assert writer.poll() is None, "the ingest finished before it could be killed"
    writer.kill()
    writer.wait(30)
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if _alive(pid)], "workers outlived their parent by 5 s"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_embedding_exits_1_with_the_index_unchanged(tmp_path: Path, tiny_model_dir, sig) -> None:
    """``docker stop`` (SIGTERM) or Ctrl-C while the model embeds: exit 1 (not 134 from an abort in a native
    thread), one line saying so, nothing published or staged."""
    corpus = _corpus(tmp_path / "corpus", copies=20)
    index = tmp_path / "index"
    done = _ingest(SAMPLE_STATUTES / "医师法.md", index, tiny_model_dir, "--quiet")
    assert done.wait(120) == 0
    before = current_version(index)
    writer = _ingest(corpus, index, tiny_model_dir, "--workers", "2", "--quiet")
    _workers_started(writer, 2)
    time.sleep(2.0)  # well into embedding
    assert writer.poll() is None, "the ingest finished before the signal"
    os.killpg(writer.pid, sig)
    err = _stderr_or_stacks(writer, timeout=60)
    assert writer.returncode == 1, err[-2000:]
    assert "interrupted" in err and "terminate called" not in err and "Traceback" not in err
    assert current_version(index) == before and not list(index.glob(".staging-*"))


_CRASH_BEFORE_CURRENT = """
import os, signal, sys
from pathlib import Path
import retrieval.index as index_module
from tests.retrieval.test_index import _write

def killed(*args, **kwargs):  # the moment between renaming the version into place and writing CURRENT
    os.kill(os.getpid(), signal.SIGKILL)

index_module.atomic_write_text = killed
_write(Path(sys.argv[1]), "zz-orphan", ["never published"])
"""


def test_kill_9_between_rename_and_current_keeps_the_live_version_and_drops_the_orphan(tmp_path: Path) -> None:
    """The orphan's name sorts after every published version; the next publish must still keep the version
    that was live before it and remove the orphan, which no reader ever saw."""
    from retrieval.index import Index
    from tests.retrieval.test_index import _write

    index = tmp_path / "index"
    first = _write(index, "a", ["one"])
    live = _write(index, "b", ["two"])
    time.sleep(1.1)  # version names start with the second: the orphan's sorts after every published one
    crashed = subprocess.run([sys.executable, "-c", _CRASH_BEFORE_CURRENT, str(index)], cwd=REPO, timeout=120)
    assert crashed.returncode == -signal.SIGKILL
    (orphan,) = {p.name for p in index.glob("v-*")} - {first, live}  # renamed into place, never published
    assert current_version(index) == live and orphan > live
    assert Index(index).docs.count_documents() == 2  # readers never see it
    newest = _write(index, "c", ["three"])
    assert sorted(p.name for p in index.glob("v-*")) == sorted([live, newest])
    assert current_version(index) == newest and Index(index).docs.count_documents() == 3


_KILL_MERGE_AT = """
import os, signal, sys
from pathlib import Path
import retrieval.index as index_module
import retrieval.segments as segments_module
from retrieval.merge_policy import MergePolicy

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

point = sys.argv[2]
if point == "copying":  # while the merged segment's rows are written in its staging directory
    segments_module.DocStore.copy_live = killed
elif point == "renamed":  # the merged segment and the version renamed into place, CURRENT not yet swapped
    index_module.atomic_write_text = killed
elif point == "pruning":  # published; the merged-away segments not yet removed
    index_module.IndexWriter._prune = killed
index_module.merge_segments(Path(sys.argv[1]), MergePolicy(floor=1, factor=4, per_tier=4))
"""

_WRITE_AND_MERGE_FOREVER = """
import sys
from pathlib import Path
from retrieval.index import merge_segments
from retrieval.merge_policy import MergePolicy
from tests.retrieval.test_segments import _history

for seed in range(1000):
    _history(Path(sys.argv[1]), seed=100 + seed, steps=5, merge=MergePolicy(floor=1, factor=2, per_tier=2))
"""


def _listed_segments(index: Path) -> set[str]:
    import json

    return {s["name"] for v in index.glob("v-*") for s in json.loads((v / "manifest.json").read_text())["segments"]}


def _whole_and_tidy(index: Path) -> None:
    """The live version opens and agrees with itself, and nothing outside the kept versions is left."""
    from retrieval.index import Index

    view = Index(index)
    assert view.docs.count() == view.store.count() == view.bm25.count() == view.manifest["counts"]["chunks"]
    assert len(view.docs.get(range(view.docs.next_rid()))) == view.docs.count()
    view.close()
    assert not list(index.glob(".staging-*")) and len(list(index.glob("v-*"))) <= 2
    assert {p.name for p in (index / "segments").iterdir()} == _listed_segments(index)


@pytest.mark.parametrize("point", ["copying", "renamed", "pruning"])
def test_kill_9_during_a_merge_leaves_the_last_published_version_and_the_next_writer_tidies(
    tmp_path: Path, point: str
) -> None:
    from retrieval.index import Index, read_manifest
    from tests.retrieval.test_segments import _bm25_groups, _history

    index = tmp_path / "index"
    _history(index, seed=21, steps=24, merge=None)
    before = current_version(index)
    ranking = _bm25_groups(Index(index), ["医师", "义务", "责任"])
    crashed = subprocess.run([sys.executable, "-c", _KILL_MERGE_AT, str(index), point], cwd=REPO, timeout=120)
    assert crashed.returncode == -signal.SIGKILL
    if point == "pruning":
        assert current_version(index) != before and "merged_at" in read_manifest(index)  # it had published
    else:
        assert current_version(index) == before  # the half-done merge is invisible
    assert _bm25_groups(Index(index), ["医师", "义务", "责任"]) == ranking
    _history(index, seed=22, steps=1, merge=None)  # the next writer
    _whole_and_tidy(index)


def test_kill_9_at_random_moments_of_writes_and_merges_never_breaks_the_index(tmp_path: Path) -> None:
    import random

    index, rng = tmp_path / "index", random.Random(7)
    for _ in range(6):
        writer = subprocess.Popen([sys.executable, "-c", _WRITE_AND_MERGE_FOREVER, str(index)], cwd=REPO)
        time.sleep(rng.uniform(2.5, 5.0))  # the imports take about two seconds; then writes and merges
        writer.kill()
        writer.wait(timeout=30)
        if current_version(index) is not None:
            from retrieval.index import Index

            view = Index(index)  # the last published version opens whole, whatever was cut short
            assert view.docs.count() == view.store.count() == view.bm25.count()
            view.close()
    from tests.retrieval.test_segments import _history

    _history(index, seed=999, steps=1, merge=None)
    _whole_and_tidy(index)
