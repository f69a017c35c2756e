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
    _, err = writer.communicate(timeout=60)
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
