"""The bundled dialogue sets: well-formed, labelled, disjoint where a tuning/report split needs it, and
(when ../shared is beside the repo) exactly what their build scripts produce."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED

EVAL = REPO / "data" / "eval"
SETS = sorted(p.parent for p in EVAL.glob("*/dialogues.jsonl"))


def _dialogues(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "dialogues.jsonl").open(encoding="utf-8")]


def _qrels(path: Path) -> dict[str, set[str]]:
    with path.open(encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh, delimiter="\t") if r[0] != "query-id"]
    out: dict[str, set[str]] = {}
    for qid, doc, _ in rows:
        out.setdefault(qid, set()).add(doc)
    return out


def test_the_sets_are_found() -> None:
    names = {p.name for p in SETS}
    assert {
        "multiturn_legal_extra",
        "multiturn_legal_more",
        "multiturn_medical",
        "multiturn_medical_more",
        "multiturn_medical_tune",
    } <= names


@pytest.mark.parametrize("folder", SETS, ids=lambda p: p.name)
def test_dialogues_are_well_formed_and_labelled(folder: Path) -> None:
    dialogues = _dialogues(folder)
    ids = [d["id"] for d in dialogues]
    assert len(ids) == len(set(ids)) >= 30
    for d in dialogues:
        roles = [m["role"] for m in d["messages"]]
        assert roles[0] == roles[-1] == "user" and all(a != b for a, b in zip(roles, roles[1:], strict=False)), d["id"]
        assert roles.count("user") >= 2 and all(m["content"].strip() for m in d["messages"]), d["id"]
    for qrels in folder.glob("qrels*.tsv"):
        labelled = _qrels(qrels)
        assert set(labelled) == set(ids), qrels.name  # every dialogue has a label, no label is stray


def test_the_medical_sets_share_no_question() -> None:
    names = ("multiturn_medical_tune", "multiturn_medical", "multiturn_medical_more", "multiturn_medical_check")
    sources = {name: {d["source_query"] for d in _dialogues(EVAL / name)} for name in names}
    assert [len(s) for s in sources.values()] == [60, 100, 100, 100]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not sources[a] & sources[b], (a, b)


@pytest.mark.skipif(not (SHARED / "eval").is_dir(), reason="needs ../shared (the source qrels)")
@pytest.mark.parametrize("folder", [p for p in SETS if (p / "build.py").is_file()], ids=lambda p: p.name)
def test_build_scripts_reproduce_the_files(folder: Path, tmp_path: Path, monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location(f"build_{folder.name}", folder / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "HERE", tmp_path)
    monkeypatch.setattr("sys.argv", ["build.py", str(SHARED)])
    module.main()
    for name in ("dialogues.jsonl", *(p.name for p in folder.glob("qrels*.tsv"))):
        assert (tmp_path / name).read_bytes() == (folder / name).read_bytes(), name
