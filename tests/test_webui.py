"""The browser test of `make webui`: `finr1 webui` starts `finr1 serve` (the embedded model) and Open
WebUI for real; headless Chromium (Debian's, driven by Playwright) opens the page, asks a finance
question and waits for the model's reply. Checked: the reply bubble has the model's text (the same
text Open WebUI stored for that turn), the request reached the model server (its log), the reply
respects the length cap, and Ctrl-C stops every process. Needs `make webui-test-deps`."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from finr1_core.config import embedded_model_dir
from finr1_core.serving import free_port
from flows.webui import DEFAULT_OPEN_WEBUI

pytestmark = pytest.mark.heavy

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
QUESTION = "What is the present value of $110 received in one year at a 10% discount rate?"
MAX_TOKENS = 48
COMPLETIONS = 'POST /v1/chat/completions HTTP/1.1" 200'


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} missing (make webui-test-deps)"
    if not DEFAULT_OPEN_WEBUI.exists():
        return f"{DEFAULT_OPEN_WEBUI} missing (make webui-setup)"
    if not (embedded_model_dir() / "config.json").exists():
        return "embedded model missing (finr1 prepare-model)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright missing (make webui-test-deps)"
    return None


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (the two servers run in sessions of their own, so not by group)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.update(kids)
        todo.extend(kids)
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def webui(tmp_path):
    why = _missing()
    if why:
        pytest.skip(why)
    port, serve_port = free_port(), free_port()
    data = tmp_path / "webui"
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("FINR1_SERVE_API_KEY", None)
    out = open(tmp_path / "finr1-webui.out", "w")
    p = subprocess.Popen([sys.executable, "-m", "flows.cli", "webui", "--port", str(port), "--serve-port", str(serve_port),
                          "--max-tokens", str(MAX_TOKENS), "--data-dir", str(data)],
                         cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while not (_healthy(f"{url}/health") and "Ctrl-C stops both" in (tmp_path / "finr1-webui.out").read_text()):
        assert p.poll() is None, (tmp_path / "finr1-webui.out").read_text()[-3000:]
        assert time.monotonic() < deadline, "finr1 webui not up after 600 s"
        time.sleep(1)
    assert _healthy(f"http://127.0.0.1:{serve_port}/health")
    # the key is random and not in anyone's argv: the endpoint refuses a request without it
    r = httpx.post(f"http://127.0.0.1:{serve_port}/v1/chat/completions", json={"model": "x", "messages": []}, timeout=30)
    assert r.status_code == 401
    kids = _descendants(p.pid)
    try:
        yield {"url": url, "data": data, "proc": p, "serve_port": serve_port}
    finally:
        p.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            rc = p.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            for k in kids:
                if _alive(k):
                    os.kill(k, signal.SIGKILL)
            raise
        finally:
            out.close()
        time.sleep(1)
        left = [k for k in kids if _alive(k)]
        for k in left:
            os.kill(k, signal.SIGKILL)
        assert rc == 0, (tmp_path / "finr1-webui.out").read_text()[-2000:]
        assert not left, f"left behind after Ctrl-C: {left}"
        assert not _healthy(f"{url}/health") and not _healthy(f"http://127.0.0.1:{serve_port}/health")


def _letters(s: str) -> str:
    return re.sub(r"[^A-Za-z]", "", s)


def test_open_webui_chat_answers_a_finance_question_from_finr1_serve(webui, tmp_path):
    from playwright.sync_api import sync_playwright

    model_log = webui["data"] / "model-server.log"
    before = model_log.read_text().count(COMPLETIONS)
    shot = Path(os.environ.get("FINR1_WEBUI_SCREENSHOT") or tmp_path / "ui-webui.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.goto(webui["url"], wait_until="domcontentloaded")
            # a fresh data dir shows the release notes once
            page.get_by_role("button", name="Okay, Let's Go!").click(timeout=120_000)
            box = page.locator("#chat-input")
            box.click()
            box.fill(QUESTION)
            page.keyboard.press("Enter")
            page.locator(".user-message", has_text=QUESTION).wait_for(timeout=60_000)
            # the copy button shows once the reply is complete
            page.locator(".chat-assistant").last.wait_for(timeout=60_000)
            page.locator("button.copy-response-button").last.wait_for(timeout=300_000)
            reply = page.locator(".chat-assistant #response-content-container").last.inner_text().strip()
            model_name = page.locator("#model-selector-model-button").inner_text()
            token = page.evaluate("() => localStorage.token")
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    print(f"reply: {reply!r}; screenshot: {shot}")
    assert len(_letters(reply)) >= 10, reply
    assert "SmolLM2-135M-Instruct" in model_name
    # the request went through finr1 serve to the model server (its per-request log line)
    assert model_log.read_text().count(COMPLETIONS) >= before + 1
    # the bubble shows what Open WebUI received and stored for this turn
    h = {"Authorization": f"Bearer {token}"}
    chats = httpx.get(f"{webui['url']}/api/v1/chats/", headers=h, timeout=30).json()
    chat = httpx.get(f"{webui['url']}/api/v1/chats/{chats[0]['id']}", headers=h, timeout=30).json()["chat"]
    msgs = chat["history"]["messages"].values()
    (answer,) = [m for m in msgs if m["role"] == "assistant"]
    (asked,) = [m for m in msgs if m["role"] == "user"]
    assert asked["content"] == QUESTION
    assert answer["done"] is True and answer["model"] == str(embedded_model_dir().resolve())
    assert _letters(answer["content"]) and _letters(answer["content"]) in _letters(reply)
    # the reply length cap (--max-tokens, Open WebUI's default model params) reached the model
    from transformers import AutoTokenizer

    n = len(AutoTokenizer.from_pretrained(str(embedded_model_dir()))(answer["content"])["input_ids"])
    assert n <= MAX_TOKENS + 2, n
    assert shot.stat().st_size > 10_000
