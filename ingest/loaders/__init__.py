"""File loaders by extension: txt, md, html, pdf, docx, xlsx, csv, jsonl and images. Each yields
:class:`Document` objects."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ingest.document import BadRecord, Document, LoadError
from ingest.loaders.docx import load_docx
from ingest.loaders.html import load_html
from ingest.loaders.image import IMAGE_SUFFIXES, load_image
from ingest.loaders.jsonl import FilePart, jsonl_parts, load_jsonl
from ingest.loaders.pdf import load_pdf
from ingest.loaders.sheet import load_csv, load_xlsx
from ingest.loaders.text import load_markdown, load_text, read_text

__all__ = [
    "LOADERS",
    "SUPPORTED_SUFFIXES",
    "ZIP_SUFFIXES",
    "load_file",
    "discover",
    "read_text",
    "LoadError",
    "FilePart",
    "file_parts",
]

Loader = Callable[[Path, str], Iterable[Document | BadRecord]]
LOADERS: dict[str, Loader] = {
    ".txt": load_text,
    ".md": load_markdown,
    ".markdown": load_markdown,
    ".html": load_html,
    ".htm": load_html,
    ".pdf": load_pdf,
    ".docx": load_docx,
    ".xlsx": load_xlsx,
    ".csv": load_csv,
    ".jsonl": load_jsonl,
    **dict.fromkeys(IMAGE_SUFFIXES, load_image),
}
ZIP_SUFFIXES = (".docx", ".xlsx")
"""Formats that are zip archives: checked for zip bombs before they are opened."""
SUPPORTED_SUFFIXES = tuple(LOADERS)


def discover(paths: Iterable[Path | str]) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """Expand files and directories (recursively) into (file, document-id base) pairs.

    Returns:
        The supported files, sorted within each argument, and (path, reason) for arguments that
        do not exist or files with an unsupported extension named explicitly.
    """
    files: list[tuple[Path, str]] = []
    skipped: list[tuple[str, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                if file.suffix.lower() in LOADERS and not any(part.startswith(".") for part in file.parts[-2:]):
                    files.append((file, file.relative_to(path).as_posix()))
        elif path.is_file():
            if path.suffix.lower() in LOADERS:
                files.append((path, path.name))
            else:
                skipped.append((str(path), f"unsupported file type {path.suffix or '(none)'}"))
        else:
            skipped.append((str(path), "no such file or directory"))
    return files, skipped


def file_parts(path: Path) -> list[FilePart | None]:
    """Units of work for one file: byte ranges of a large JSONL file, else ``[None]`` (the whole file)."""
    return jsonl_parts(path) if path.suffix.lower() == ".jsonl" else [None]


def load_file(path: Path, doc_id: str, part: FilePart | None = None) -> Iterator[Document | BadRecord]:
    """Load one file (or one part of a JSONL file, see :func:`file_parts`) by extension.

    Multi-record formats yield a :class:`BadRecord` for each unusable record and go on.

    Raises:
        LoadError: naming the file, for unreadable or malformed input.
    """
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise LoadError(f"{path}: unsupported file type {path.suffix}")
    try:
        yield from (load_jsonl(path, doc_id, part) if part is not None else loader(path, doc_id))
    except LoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - third-party parsers raise anything; name the file
        raise LoadError(f"{path}: {type(exc).__name__}: {exc}") from exc
