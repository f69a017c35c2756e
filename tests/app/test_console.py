"""The operator console in a real browser (Debian's Chromium driven by Playwright) against a real
``zhrag serve`` on the sample statutes, with an admin key and a read-only key.

Screenshots of the three views at desktop and phone width are taken every run; ``CONSOLE_SCREENSHOTS=DIR``
keeps them (the README's come from ``CONSOLE_SCREENSHOTS=docs/console``).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")
ADMIN, READER = "console-admin-key", "console-read-key"
QUESTION = "医师在执业活动中应当履行哪些义务"
DESKTOP, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}
CHROMIUM_ARGS = [  # Chromium's own background connections have nowhere to go here
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return 'pip install -e ".[dev]" (playwright)'
    if not CHROMIUM.exists():
        return "apt-get install chromium"
    return None


if _missing() and os.environ.get("CI"):  # CI installs both: a skip there would hide a broken install
    pytest.fail(f"the console's browser tests need {_missing()}", pytrace=False)
pytestmark = pytest.mark.skipif(_missing() is not None, reason=f"needs {_missing()}")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(sample_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``zhrag serve`` on a copy of the sample statutes: an admin key and a read-only key."""
    index = tmp_path_factory.mktemp("console") / "statutes"
    shutil.copytree(sample_index, index)
    port = _port()
    env = {**os.environ, "ZHRAG_ADMIN_KEYS": ADMIN, "ZHRAG_API_KEYS": READER, "ZHRAG_WRITE_WAIT_S": "30"}
    log = open(index.parent / "serve.log", "w")  # noqa: SIM115 - closed after the server
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--index", str(index), "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"zhrag serve did not start:\n{(index.parent / 'serve.log').read_text()}")
        time.sleep(0.3)
    yield base
    process.terminate()
    process.wait(30)
    log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, server: str) -> Iterator:
    """A fresh browser context (empty session storage) on the console; at the end, no request the page made
    may have left the server's origin, and the page may have thrown no error."""
    context = browser.new_context(viewport=DESKTOP, locale="zh-CN")
    page = context.new_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server}/")
    yield page
    context.close()
    assert requests and all(url.startswith(f"{server}/") or url.startswith("data:") for url in requests), requests
    assert not errors


def _login(page, key: str) -> None:
    page.get_by_role("textbox", name="访问密钥").fill(key)
    page.get_by_role("button", name="进入").click()
    page.wait_for_selector("#docs-table tbody tr")


def _shot(page, name: str, viewport: dict[str, int], tmp_path: Path) -> None:
    """A full-page screenshot at ``viewport``; the page never scrolls sideways (tables scroll in their box)."""
    page.set_viewport_size(viewport)
    page.wait_for_timeout(100)
    assert page.evaluate("document.scrollingElement.scrollWidth") <= viewport["width"]
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{'phone' if viewport is PHONE else 'desktop'}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    page.set_viewport_size(DESKTOP)


def _search(page, question: str) -> list[str]:
    page.get_by_role("tab", name="检索试用").click()
    page.get_by_label("问题").fill(question)
    page.get_by_role("button", name="检索", exact=True).click()
    page.wait_for_selector("#results .card")
    return page.locator("#results .card .label").all_text_contents()


def test_the_console_asks_for_a_key_then_searches(page, tmp_path: Path) -> None:
    assert page.get_by_role("heading", name="输入访问密钥").is_visible()
    assert not page.locator("#tabs").is_visible()  # nothing but the login form without a key
    page.get_by_role("textbox", name="访问密钥").fill("not-a-key")
    page.get_by_role("button", name="进入").click()
    page.wait_for_selector("#login-error:text('密钥无效')")
    _login(page, ADMIN)
    _shot(page, "bases", DESKTOP, tmp_path)
    _shot(page, "bases", PHONE, tmp_path)
    labels = _search(page, QUESTION)
    assert any(re.fullmatch(r"中华人民共和国医师法 第[一二三四五六七八九十百]+条", label) for label in labels), labels
    card = page.locator("#results .card", has_text="中华人民共和国医师法 第").first
    assert "医师法.md" in card.inner_text() and "得分" in card.inner_text()
    assert page.locator("#results mark").count() >= 1  # the question's terms are marked
    assert "BM25 第" in page.locator("#results .card header").first.inner_text()  # the leg ranks
    assert QUESTION in page.locator("#search-meta .queries").inner_text()  # the queries run
    _shot(page, "search", DESKTOP, tmp_path)
    _shot(page, "search", PHONE, tmp_path)
    page.get_by_role("tab", name="运行状态").click()
    page.wait_for_selector("#latency tbody tr td:text('/search')")
    row = page.locator("#health-bases tbody tr").first.inner_text()
    assert "statutes" in row and "faiss" in row and "本进程" in row and "v-" in row
    assert page.locator("#microbatch").inner_text().startswith("微批")
    _shot(page, "health", DESKTOP, tmp_path)
    _shot(page, "health", PHONE, tmp_path)


def test_a_cited_article_comes_first_with_its_verdict(page) -> None:
    _login(page, READER)
    labels = _search(page, "《中华人民共和国医师法》第二十三条规定了什么？")
    assert labels[0] == "中华人民共和国医师法 第二十三条"
    assert page.locator("#results .card").first.locator(".badge").inner_text() == "引用命中"
    verdict = page.locator("#search-meta .verdicts li")
    assert verdict.count() == 1 and verdict.inner_text().startswith("✓ 已找到：中华人民共和国医师法 第二十三条")


def test_a_conversation_and_an_article_expanded(page) -> None:
    _login(page, READER)
    page.get_by_role("tab", name="检索试用").click()
    page.get_by_label("对话历史").fill("用户：医师法对医师有哪些规定？\n助手：医师法规定了医师的考试、注册和执业规则。")
    page.get_by_label("展开").select_option("article")
    labels = _search(page, "那他们在执业活动中要履行什么义务？")
    queries = page.locator("#search-meta .queries li").all_text_contents()
    assert len(queries) > 1 or "医师法" in queries[0]  # the builder read the history, not the turn alone
    assert labels


def test_upload_list_and_delete_a_document(page, server: str, tmp_path: Path) -> None:
    _login(page, ADMIN)
    notice = "# 罕见病用药保障通知\n\n第一条 医疗机构应当保障罕见病患者的用药需求。\n\n第二条 药品监督管理部门应当加快审评。\n"
    # Dropped onto the drop zone, as a user drags a file from the desktop.
    page.evaluate(
        """([name, text]) => {
            const data = new DataTransfer();
            data.items.add(new File([text], name, { type: "text/markdown" }));
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true }));
        }""",
        ["罕见病用药通知.md", notice],
    )
    page.wait_for_selector("#upload-result .ok")
    assert "已入库 1 个文档" in page.locator("#upload-result").inner_text()
    page.get_by_label("按名称搜索").fill("罕见病")
    page.get_by_role("button", name="搜索", exact=True).click()
    page.wait_for_selector("#docs-table tbody tr:has-text('罕见病用药通知.md')")
    rows = page.locator("#docs-table tbody tr")
    listed = httpx.get(
        f"{server}/documents", params={"q": "罕见病"}, headers={"Authorization": f"Bearer {ADMIN}"}
    ).json()
    assert rows.count() == 1 and listed["total"] == 1
    assert rows.first.locator("td").nth(2).inner_text() == str(listed["documents"][0]["chunks"])  # its chunks
    assert "共 1 个文档" in page.locator("#page-info").inner_text()
    # A file the pipeline cannot use: said plainly, nothing published.
    blank = tmp_path / "空白.md"
    blank.write_text("   \n", encoding="utf-8")
    page.set_input_files("#files", str(blank))
    page.wait_for_selector("#upload-result .error")
    message = page.locator("#upload-result").inner_text()
    assert "没有发布任何变更" in message and "空白.md" in message
    # Delete, after a confirmation.
    rows.first.get_by_role("button", name="删除 罕见病用药通知.md").click()
    assert page.locator("#confirm").is_visible() and "罕见病用药通知.md" in page.locator("#confirm-text").inner_text()
    page.get_by_role("button", name="确认删除").click()
    page.wait_for_selector("#upload-result .ok:has-text('已删除')")
    page.wait_for_selector("#page-info:has-text('共 0 个文档')")
    gone = httpx.get(f"{server}/documents", params={"q": "罕见病"}, headers={"Authorization": f"Bearer {ADMIN}"})
    assert gone.json()["total"] == 0


def test_a_read_only_key_sees_no_write_controls(page) -> None:
    _login(page, READER)
    assert page.locator("#role").inner_text() == "只读"
    assert not page.locator("#upload").is_visible() and not page.locator("#files").is_visible()
    assert page.get_by_role("button", name="删除").count() == 0
    assert page.locator("#docs-table tbody tr").count() == 6  # it still sees the documents
    assert _search(page, QUESTION)


def test_verify_an_answer_marks_each_citation(page) -> None:
    _login(page, READER)
    page.get_by_role("tab", name="检索试用").click()
    page.get_by_label("回答文本").fill(
        "依据《中华人民共和国医师法》第二十三条，医师应当如实记录病历；《中华人民共和国医师法》第九百九十九条另有规定。"
    )
    page.get_by_role("button", name="核对").click()
    page.wait_for_selector("#verdicts li")
    verdicts = page.locator("#verdicts li")
    assert verdicts.count() == 2
    assert verdicts.nth(0).inner_text().startswith("✓ 已找到：中华人民共和国医师法 第二十三条")
    assert verdicts.nth(1).inner_text().startswith("✗ 未找到") and "该法律没有这一条" in verdicts.nth(1).inner_text()
    assert "bad" in verdicts.nth(1).get_attribute("class")
