"""Per-file limits that keep one hostile or broken file from stalling or exhausting an ingest run.

A file over a limit is skipped and reported (like an unreadable one); the rest of the run goes on.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.document import LoadError

__all__ = ["FileLimits", "FileTimeout", "check_file", "check_archive", "time_limit", "check_document"]


@dataclass(frozen=True)
class FileLimits:
    """Limits per input file.

    Attributes:
        max_file_mb: Largest file read (JSONL files are read in parts, so this bounds other formats).
        max_doc_chars: Longest document text (a record of a JSONL file, or a whole file's text).
        max_archive_ratio: Largest ratio of unpacked to packed size of a ``.docx``/``.xlsx`` (a zip): zip bombs.
        max_seconds: Longest one file (or JSONL part) may take to load and chunk; ``0`` = no limit.
    """

    max_file_mb: float = 64.0
    max_doc_chars: int = 5_000_000
    max_archive_ratio: float = 100.0
    max_seconds: float = 300.0


class FileTimeout(LoadError):
    """A file took longer than ``FileLimits.max_seconds``."""


def check_file(path: Path, limits: FileLimits, whole: bool = True) -> None:
    """Refuse a file larger than the limit (``whole=False``: a part of a file that is read in parts).

    Raises:
        LoadError: naming the file, its size and the setting that limits it.
    """
    size = path.stat().st_size
    if whole and size > limits.max_file_mb * 1024 * 1024:
        raise LoadError(
            f"{path}: {size / 1024 / 1024:.1f} MB is over the {limits.max_file_mb:g} MB limit per file "
            "(ZHRAG_INGEST_MAX_FILE_MB)"
        )


def check_archive(path: Path, limits: FileLimits) -> None:
    """Refuse a zip-based file (``.docx``, ``.xlsx``) that unpacks to far more than its size (a zip bomb)."""
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise LoadError(f"{path}: not a valid {path.suffix} (zip) file: {exc}") from exc
    packed = max(path.stat().st_size, 1)
    limit = max(limits.max_file_mb * 1024 * 1024, packed * limits.max_archive_ratio)
    if unpacked > limit:
        raise LoadError(
            f"{path}: unpacks to {unpacked / 1024 / 1024:.0f} MB from {packed / 1024 / 1024:.1f} MB "
            f"(over {limits.max_archive_ratio:g}x and {limits.max_file_mb:g} MB): refused as a zip bomb"
        )


def check_document(text: str, where: str, limits: FileLimits) -> None:
    """Refuse a document whose text is longer than the limit."""
    if len(text) > limits.max_doc_chars:
        raise LoadError(
            f"{where}: {len(text):,} characters is over the {limits.max_doc_chars:,} limit per document "
            "(ZHRAG_INGEST_MAX_DOC_CHARS)"
        )


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`FileTimeout` in the block after ``seconds`` (SIGALRM; only in a main thread, else no limit).

    Ingest's worker processes run each file in their main thread, as does a single-process run.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(_signum: int, _frame: Any) -> None:
        raise FileTimeout(f"{what}: took longer than {seconds:g} s to load and chunk (ZHRAG_INGEST_FILE_TIMEOUT_S)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
