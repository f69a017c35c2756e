"""Knowledge bases under one server: isolation by base and by key, shared models, safe defaults, rate limits."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.access import Access, KeyFileError, key_hash, load_key_file
from app.api import create_app
from app.cli import main
from app.settings import Settings
from ingest.pipeline import ingest
from retrieval.embedders.microbatch import batcher_of
from retrieval.embedders.sentence_transformers import SentenceTransformerEmbedder
from retrieval.index import current_version
from retrieval.text import default_analyzer
from tests.conftest import sample_texts

READ_A, WRITE_B, ADMIN, STRANGER = "read-a-key", "write-b-key", "admin-key", "stranger-key"
GUIDE = "# 院内感染防控指引\n\n第一条 手术器械应当一用一灭菌，灭菌记录保存三年。\n"
CASE = "# 张三诉李四合同纠纷案\n\n本案争议焦点为借款合同的利息约定是否超过法定上限。\n"


def _keys_file(path: Path) -> Path:
    path.write_text(
        f'[[keys]]\nname = "reader-a"\nsha256 = "{key_hash(READ_A)}"\nroles = {{ statutes = "read" }}\n\n'
        f'[[keys]]\nname = "writer-b"\nsha256 = "{key_hash(WRITE_B)}"\nroles = {{ hospital = "write" }}\n\n'
        f'[[keys]]\nname = "ops"\nsha256 = "{key_hash(ADMIN)}"\nroles = {{ "*" = "admin" }}\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model (other weights): a base built with it needs a model of its own."""
    from app.tiny_model import build_tiny_qwen3_embedding

    return build_tiny_qwen3_embedding(tmp_path_factory.mktemp("models") / "other", sample_texts(), seed=7)


@pytest.fixture()
def root(sample_index: Path, tiny_model_dir: Path, other_model: Path, tmp_path: Path) -> Path:
    """Three bases: the sample statutes (legal), a hospital's rules (medical, same model), a firm's cases
    (another model)."""
    base_root = tmp_path / "kbs"
    shutil.copytree(sample_index, base_root / "statutes")
    docs = tmp_path / "docs"
    (docs / "hospital").mkdir(parents=True)
    (docs / "hospital" / "感染防控.md").write_text(GUIDE, encoding="utf-8")
    (docs / "cases").mkdir()
    (docs / "cases" / "合同纠纷.md").write_text(CASE, encoding="utf-8")
    medical = SentenceTransformerEmbedder(str(tiny_model_dir), domain="medical")
    ingest([docs / "hospital"], base_root / "hospital", medical, default_analyzer(), progress=False, domain="medical")
    other = SentenceTransformerEmbedder(str(other_model))
    ingest([docs / "cases"], base_root / "cases", other, default_analyzer(), progress=False, domain="legal")
    return base_root


@pytest.fixture()
def served(root: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(root=root, keys_file=_keys_file(tmp_path / "keys.toml"), reload_interval=0.2)
    with TestClient(create_app(settings)) as client:
        yield client


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _search(client: TestClient, kb: str, query: str, key: str = ADMIN) -> list[dict]:
    response = client.post(f"/kbs/{kb}/search", json={"query": query, "top_k": 5}, headers=_as(key))
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_each_base_answers_with_its_own_documents_and_same_model_bases_share_it(served: TestClient) -> None:
    bases = served.app.state.bases
    assert bases.names() == ["cases", "hospital", "statutes"]
    assert {r["source"].split("/")[-1] for r in _search(served, "hospital", "手术器械灭菌")} == {"感染防控.md"}
    assert {r["source"].split("/")[-1] for r in _search(served, "cases", "借款合同利息")} == {"合同纠纷.md"}
    assert all("statutes" in r["source"] for r in _search(served, "statutes", "医师的义务"))
    assert bases.models_loaded() == 2  # statutes and hospital share one model, cases has its own
    hospital, statutes = bases.services("hospital"), bases.services("statutes")
    assert batcher_of(hospital.embedder) is batcher_of(statutes.embedder)
    assert hospital.embedder.instruction != statutes.embedder.instruction  # each its own domain's task
    same_text = ["医疗机构应当公开收费标准"]
    assert (hospital.embedder.embed_queries(same_text) != statutes.embedder.embed_queries(same_text)).any()
    listed = served.get("/kbs", headers=_as(ADMIN)).json()["kbs"]
    assert {b["name"]: (b["domain"], b["documents"]) for b in listed} == {
        "cases": ("legal", 1),
        "hospital": ("medical", 1),
        "statutes": ("legal", 6),
    }


def test_a_read_key_sees_only_its_base_and_cannot_change_it(served: TestClient) -> None:
    key = _as(READ_A)
    assert [b["name"] for b in served.get("/kbs", headers=key).json()["kbs"]] == ["statutes"]
    unknown = served.post("/kbs/nowhere/search", json={"query": "手术"}, headers=key)
    assert unknown.status_code == 404
    for method, path, body in [
        ("POST", "/kbs/hospital/search", {"query": "手术"}),
        ("GET", "/kbs/hospital/documents", None),
        ("POST", "/kbs/hospital/documents", {"id": "x", "text": "新规定"}),
        ("DELETE", "/kbs/hospital/documents/感染防控.md", None),
        ("POST", "/kbs/hospital/citations/verify", {"text": "依据《医师法》第二十三条"}),
        ("POST", "/search", {"query": "手术", "kb": "hospital"}),
    ]:
        response = served.request(method, path, json=body, headers=key)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json() == {"error": {"code": "not_found", "message": "no knowledge base 'hospital'"}}
        assert response.json()["error"]["message"].replace("hospital", "nowhere") == unknown.json()["error"]["message"]
    assert served.get("/kbs/statutes/documents", headers=key).status_code == 200
    for method, path, body in [
        ("POST", "/kbs/statutes/documents", {"id": "x", "text": "新规定"}),
        ("DELETE", "/kbs/statutes/documents/医师法.md", None),
    ]:
        refused = served.request(method, path, json=body, headers=key)
        assert refused.status_code == 403 and "write role" in refused.json()["error"]["message"]
    assert served.post("/kbs", json={"name": "new"}, headers=key).status_code == 403
    assert served.delete("/kbs/statutes", headers=key).status_code == 403


def test_a_write_key_changes_its_base_only_and_only_admin_manages_bases(served: TestClient) -> None:
    writer = _as(WRITE_B)
    added = served.post(
        "/kbs/hospital/documents", json={"id": "手卫生", "text": "医务人员接触患者前应当洗手。"}, headers=writer
    )
    assert added.status_code == 200, added.text
    assert any(r["doc_id"] == "手卫生" for r in _search(served, "hospital", "接触患者前洗手", WRITE_B))
    assert served.delete("/kbs/hospital/documents/手卫生", headers=writer).status_code == 200
    other = served.post("/kbs/statutes/documents", json={"id": "x", "text": "新规定"}, headers=writer)
    assert other.status_code == 404  # it may not even know the base exists
    assert served.post("/kbs", json={"name": "clinic"}, headers=writer).status_code == 403
    created = served.post("/kbs", json={"name": "clinic", "domain": "medical"}, headers=_as(ADMIN))
    assert created.status_code == 201 and created.json()["documents"] == 0
    assert (
        served.post("/kbs/clinic/documents", json={"id": "d", "text": "门诊预约须知"}, headers=_as(ADMIN)).status_code
        == 200
    )
    assert served.app.state.bases.models_loaded() == 2  # the new base took the loaded model
    assert served.post("/kbs", json={"name": "clinic"}, headers=_as(ADMIN)).status_code == 409
    assert served.post("/kbs", json={"name": "../etc"}, headers=_as(ADMIN)).status_code == 422
    assert served.delete("/kbs/clinic", headers=writer).status_code == 403
    assert served.delete("/kbs/clinic", headers=_as(ADMIN)).status_code == 200
    assert served.post("/kbs/clinic/search", json={"query": "门诊"}, headers=_as(ADMIN)).status_code == 404
    assert "clinic" not in served.app.state.bases.names()


def test_dify_refusals_keep_difys_shape(served: TestClient) -> None:
    def retrieve(knowledge_id: str, headers: dict[str, str]):
        body = {"knowledge_id": knowledge_id, "query": "手术器械", "retrieval_setting": {"top_k": 2}}
        return served.post("/retrieval", json=body, headers=headers)

    ok = retrieve("hospital", _as(WRITE_B))
    assert ok.status_code == 200 and ok.json()["records"][0]["metadata"]["doc_id"] == "感染防控.md"
    hidden, missing = retrieve("statutes", _as(WRITE_B)), retrieve("nowhere", _as(WRITE_B))
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error_code"] == missing.json()["error_code"] == 2001
    assert hidden.json()["error_msg"].replace("statutes", "nowhere") == missing.json()["error_msg"]
    assert retrieve("hospital", {}).json()["error_code"] == 1001
    assert retrieve("hospital", _as(STRANGER)).json() == {"error_code": 1002, "error_msg": "Authorization failed"}


def test_an_ingest_into_one_base_is_served_live_and_no_other_base_changes(
    served: TestClient, root: Path, tmp_path: Path
) -> None:
    before = {name: s.index.version for name, s in served.app.state.bases.loaded().items()}
    notice = tmp_path / "通知.md"
    notice.write_text("# 关于发热门诊的通知\n\n发热门诊二十四小时开放，预检分诊后就诊。\n", encoding="utf-8")
    assert main(["ingest", str(notice), "--index", str(root / "hospital"), "--quiet"]) == 0
    deadline = time.monotonic() + 30
    while served.app.state.bases.services("hospital").index.version == before["hospital"]:
        assert time.monotonic() < deadline, "the new version was not served"
        time.sleep(0.1)
    assert any(r["doc_id"] == "通知.md" for r in _search(served, "hospital", "发热门诊开放时间"))
    after = {name: s.index.version for name, s in served.app.state.bases.loaded().items()}
    assert after["statutes"] == before["statutes"] and after["cases"] == before["cases"]


def test_without_keys_only_a_loopback_server_takes_writes(sample_index: Path, tmp_path: Path) -> None:
    doc = {"id": "新规", "text": "医疗机构应当公开收费标准。"}
    for host, writes in (("0.0.0.0", False), ("127.0.0.1", True), ("::1", True), ("192.168.1.20", False)):
        index = tmp_path / host.replace(":", "_") / "index"
        shutil.copytree(sample_index, index)
        with TestClient(create_app(Settings(index=index, host=host, reload_interval=0))) as c:
            assert c.post("/search", json={"query": "医师的义务"}).status_code == 200
            added = c.post("/documents", json=doc)
            deleted = c.delete("/documents/医师法.md")
            if writes:
                assert added.status_code == 200 and deleted.status_code == 200, (host, added.text)
            else:
                for refused in (added, deleted):
                    assert refused.status_code == 403 and "ZHRAG_ANONYMOUS_ROLE" in refused.json()["error"]["message"]
                assert current_version(index) == current_version(sample_index)
    opened = tmp_path / "opened" / "index"
    shutil.copytree(sample_index, opened)
    settings = Settings(index=opened, host="0.0.0.0", anonymous_role="write", reload_interval=0)
    with TestClient(create_app(settings)) as c:
        assert c.post("/documents", json=doc).status_code == 200


@pytest.mark.parametrize(
    ("entry", "line", "says"),
    [
        ('name = "a"\nkey = "plain-secret"\nroles = { statutes = "read" }', 4, "plain text"),
        (f'name = "a"\nsha256 = "{key_hash("k")}"\nroles = {{ statutes = "owner" }}', 5, "unknown role 'owner'"),
        (f'name = "a"\nsha256 = "{key_hash("k")}"\nroles = {{ "../etc" = "read" }}', 5, "not a knowledge base name"),
        (f'name = "a"\nsha256 = "{key_hash("k")}"\nroles = {{ "a/b" = "read" }}', 5, "not a knowledge base name"),
        ('name = "a"\nsha256 = "1234"\nroles = { statutes = "read" }', 4, "64 hex digits"),
    ],
)
def test_a_bad_key_file_is_refused_naming_the_line(tmp_path: Path, entry: str, line: int, says: str) -> None:
    keys = tmp_path / "keys.toml"  # a good key first: the bad one's line is the 4th or 5th
    good = f'[[keys]]\nsha256 = "{key_hash("ok")}"\nroles = {{ "*" = "read" }}\n'
    keys.write_text(f"{good}[[keys]]\n{entry}\n", encoding="utf-8")
    with pytest.raises(KeyFileError, match=rf"keys.toml:{line + 2}: .*{says}"):
        load_key_file(keys)
    as_json = tmp_path / "keys.json"
    as_json.write_text('{"keys": [\n  {"name": "x", "key": "plain"}\n]}\n', encoding="utf-8")
    with pytest.raises(KeyFileError, match=r"keys.json:2: .*plain text"):
        load_key_file(as_json)


def test_serve_refuses_a_bad_key_file_before_listening(sample_index: Path, tmp_path: Path, capsys) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text('[[keys]]\nname = "bot"\nkey = "sk-plain"\nroles = { "*" = "read" }\n', encoding="utf-8")
    assert main(["serve", "--index", str(sample_index), "--keys-file", str(keys)]) == 2
    assert f"{keys}:3: a key in plain text" in capsys.readouterr().err


def test_the_shorthand_read_key_can_no_longer_change_documents() -> None:
    access = Access.configure(api_keys=["q"], admin_keys=["a"])
    reader, admin = access.grant_for("q"), access.grant_for("a")
    assert reader.may("read", "any-base") and not reader.may("write", "any-base")
    assert admin.may("write", "any-base") and admin.admin
    assert access.anonymous is None  # keys are set: no key, no access


def test_a_key_over_its_rate_gets_429_and_other_keys_do_not(sample_index: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(
        f'[[keys]]\nname = "busy"\nsha256 = "{key_hash("busy")}"\nroles = {{ "*" = "read" }}\nrate = 5\n\n'
        f'[[keys]]\nname = "calm"\nsha256 = "{key_hash("calm")}"\nroles = {{ "*" = "read" }}\n',
        encoding="utf-8",
    )
    with TestClient(create_app(Settings(index=sample_index, keys_file=keys, reload_interval=0))) as c:
        start = time.monotonic()
        answers = [c.get("/kbs", headers=_as("busy")) for _ in range(60)]
        elapsed = time.monotonic() - start
        calm = [c.get("/kbs", headers=_as("calm")).status_code for _ in range(20)]
    passed = sum(a.status_code == 200 for a in answers)
    limited = [a for a in answers if a.status_code == 429]
    assert passed <= 10 + 5 * elapsed + 1 and limited  # a burst of 2 x 5, then 5 a second
    assert all(int(a.headers["retry-after"]) >= 1 and "requests per second" in a.text for a in limited)
    assert calm == [200] * 20


def test_kb_commands_create_list_and_delete_bases(
    tiny_model_dir: Path, sample_index: Path, tmp_path: Path, capsys
) -> None:
    root = tmp_path / "kbs"
    shutil.copytree(sample_index, root / "statutes")
    assert (
        main(["kb", "create", "guidelines", "--root", str(root), "--model", str(tiny_model_dir), "--domain", "medical"])
        == 0
    )
    assert main(["kb", "create", "guidelines", "--root", str(root), "--model", str(tiny_model_dir)]) == 2
    assert main(["kb", "create", "../escape", "--root", str(root), "--model", str(tiny_model_dir)]) == 2
    assert not (tmp_path / "escape").exists()
    capsys.readouterr()
    assert main(["kb", "list", "--root", str(root)]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [(r[0], r[1], r[4]) for r in rows] == [
        ("guidelines", "0 documents", "medical"),
        ("statutes", "6 documents", "legal"),
    ]
    assert main(["kb", "delete", "guidelines", "--root", str(root)]) == 2  # not without --yes
    assert (root / "guidelines").is_dir()
    assert main(["kb", "delete", "guidelines", "--root", str(root), "--yes"]) == 0
    assert not (root / "guidelines").exists() and (root / "statutes").is_dir()


def test_a_running_server_follows_bases_created_and_deleted_beside_it(
    served: TestClient, root: Path, tiny_model_dir: Path
) -> None:
    def names() -> list[str]:
        return [b["name"] for b in served.get("/kbs", headers=_as(ADMIN)).json()["kbs"]]

    def wait_for(expected: list[str]) -> None:
        deadline = time.monotonic() + 30
        while names() != expected:
            assert time.monotonic() < deadline, names()
            time.sleep(0.1)

    assert main(["kb", "create", "pharmacy", "--root", str(root), "--model", str(tiny_model_dir)]) == 0
    wait_for(["cases", "hospital", "pharmacy", "statutes"])
    assert served.app.state.bases.models_loaded() == 2  # the new base took the loaded model
    assert main(["kb", "delete", "pharmacy", "--root", str(root), "--yes"]) == 0
    wait_for(["cases", "hospital", "statutes"])
    assert served.post("/kbs/pharmacy/search", json={"query": "处方"}, headers=_as(ADMIN)).status_code == 404
