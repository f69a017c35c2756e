"""Shared by the build scripts of the hand-written dialogue sets: assemble dialogues, read and write qrels."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["read_qrels", "assemble", "write_set", "build_set"]

# The folder of the source eval sets when no other is named on the command line: ../shared beside the repo.
DEFAULT_SHARED = Path(__file__).resolve().parents[2].parent / "shared"


def read_qrels(path: Path) -> dict[str, list[str]]:
    """query id -> relevant ids of a BEIR qrels TSV."""
    qrels: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as fh:
        for row in csv.reader(fh, delimiter="\t"):
            if row[0] != "query-id":
                qrels.setdefault(row[0], []).append(row[1])
    return qrels


def assemble(
    prefix: str,
    rows: Sequence[tuple],
    replies: Sequence[str],
) -> list[dict]:
    """Dialogues from ``(source query, topic-switch question or None, earlier user turns, last user turn
    [, statute the last assistant turn names])`` rows; assistant turns cycle through ``replies``."""
    dialogues = []
    for n, (qid, switch, context, last, *named) in enumerate(rows):
        statute = named[0] if named else None
        users = ([switch] if switch else []) + list(context) + [last]
        messages = []
        for i, text in enumerate(users):
            messages.append({"role": "user", "content": text})
            if i < len(users) - 1:
                reply = replies[(n + i) % len(replies)]
                if statute and i == len(users) - 2:
                    reply = f"这个问题要看《{statute}》的相关规定。"
                messages.append({"role": "assistant", "content": reply})
        dialogues.append(
            {"id": f"{prefix}-{n:03d}", "source_query": qid, "messages": messages, "topic_switch": bool(switch)}
        )
    return dialogues


def write_set(folder: Path, dialogues: Sequence[dict], qrels: Mapping[str, Mapping[str, list[str]]]) -> None:
    """``dialogues.jsonl`` and one qrels file per ``{file name: source query -> relevant ids}``."""
    with open(folder / "dialogues.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in dialogues)
    for name, source in qrels.items():
        with open(folder / name, "w", encoding="utf-8") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            fh.writelines(f"{d['id']}\t{c}\t1\n" for d in dialogues for c in source[d["source_query"]])
    print(f"{len(dialogues)} dialogues")


def build_set(
    folder: Path,
    prefix: str,
    rows: Sequence[tuple],
    replies: Sequence[str],
    source: str,
    qrel_names: Sequence[str] = ("qrels.tsv",),
) -> None:
    """A build script's whole job: assemble ``rows`` (see :func:`assemble`) and write them into ``folder``
    with the qrels of ``<shared>/eval/<source>`` (shared: the first command-line argument, or ../shared)."""
    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SHARED
    qrels = {name: read_qrels(shared / "eval" / source / name) for name in qrel_names}
    write_set(folder, assemble(prefix, rows, replies), qrels)
