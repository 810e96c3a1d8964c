"""`finr1 serve`: the embedded model served for real (transformers serve), with and without an API
key; a bad path is one line; SIGTERM stops the model server too. The vLLM command is checked as
built, including its forced-think chat template (vLLM itself runs in tests/test_vllm.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from finr1_core.config import embedded_model_dir
from finr1_core.serving import VLLMServer, forced_think_template, free_port

REPO = Path(__file__).resolve().parent.parent
MODEL = str(embedded_model_dir())


def _start(*args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    p = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", MODEL, "--port", str(port), *args], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert p.poll() is None, p.stdout.read()[-2000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return p, port
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    os.killpg(p.pid, signal.SIGKILL)
    raise AssertionError("finr1 serve not healthy")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-g", str(os.getpgid(pid))], capture_output=True, text=True).stdout.split()
    return [int(x) for x in out if int(x) != pid]


def _stop(p: subprocess.Popen) -> None:
    kids = _children(p.pid)
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) is not None
    time.sleep(0.5)
    alive = [k for k in kids if Path(f"/proc/{k}").exists() and open(f"/proc/{k}/stat").read().split()[2] != "Z"]
    assert not alive, f"left behind: {alive}"


def _complete(port: int, key: str | None) -> httpx.Response:
    h = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": MODEL, "prompt": "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n", "max_tokens": 8}
    return httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, headers=h, timeout=120)


def test_serve_with_api_key_refuses_requests_without_it():
    p, port = _start("--api-key", "s3cret-key")
    try:
        r = _complete(port, None)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert _complete(port, "wrong").status_code == 401
        r = _complete(port, "s3cret-key")
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"]
        _models_and_context_limit(port, "s3cret-key")
    finally:
        _stop(p)


def _models_and_context_limit(port: int, key: str | None) -> None:
    """Issue 23, finding 9: /v1/models lists the served model (transformers serve answered 500);
    a prompt longer than the context gets a fast 400 naming it (it answered 200 with junk after 81 s)."""
    h = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=h, timeout=30)
    assert r.status_code == 200, r.text
    assert [m["id"] for m in r.json()["data"]] == [MODEL]
    if key:
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).status_code == 401
    long = "<|im_start|>user\n" + "hello " * 12000 + "<|im_end|>\n<|im_start|>assistant\n"
    for path, body in (("completions", {"model": MODEL, "prompt": long, "max_tokens": 8}),
                       ("chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hello " * 12000}], "max_tokens": 8})):
        t0 = time.monotonic()
        r = httpx.post(f"http://127.0.0.1:{port}/v1/{path}", json=body, headers=h, timeout=60)
        took = time.monotonic() - t0
        assert r.status_code == 400 and took < 5, (path, r.status_code, took, r.text[:300])
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded" and "maximum context length is 8192 tokens" in err["message"], err
    # a prompt that fits plus max_tokens past the context is refused too; one that fits goes through
    r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 9000}, headers=h, timeout=60)
    assert r.status_code == 400 and "(1 in the prompt, 9000 for the completion)" in r.json()["error"]["message"], r.text[:300]


def test_serve_without_api_key_answers_and_stops_cleanly():
    p, port = _start()
    try:
        r = _complete(port, None)
        assert r.status_code == 200 and r.json()["choices"][0]["text"]
        _models_and_context_limit(port, None)
    finally:
        _stop(p)


def test_serve_bad_model_path_is_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "flows.cli", "serve", str(tmp_path / "nope")], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: model: {tmp_path / 'nope'} is not a directory"


def test_vllm_command_has_reasoning_parser_forced_think_and_no_key_in_argv():
    srv = VLLMServer(MODEL, "0.0.0.0", 8000, api_key="k-123")
    cmd = srv.command()
    assert cmd[1:5] == ["-m", "vllm.entrypoints.openai.api_server", "--model", MODEL]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    # SmolLM2 spells <think> with ordinary tokens: deepseek_r1 refuses it, finr1_think (the same rule on text) serves it
    assert cmd[cmd.index("--reasoning-parser") + 1] == "finr1_think"
    assert cmd[cmd.index("--reasoning-parser-plugin") + 1] == str(REPO / "infra" / "vllm" / "think_parser.py")
    assert "k-123" not in " ".join(cmd) and srv.env()["VLLM_API_KEY"] == "k-123"
    # a host without a GPU runs vLLM eager (the CPU build's compile warm-up: 342 s start-up against 74 s);
    # a GPU host keeps CUDA graphs; an explicit choice wins
    assert ("--enforce-eager" in cmd) == (not Path("/dev/nvidiactl").exists())
    assert "--enforce-eager" in VLLMServer(MODEL, enforce_eager=True).command()
    assert "--enforce-eager" not in VLLMServer(MODEL, enforce_eager=False).command()
    template = Path(cmd[cmd.index("--chat-template") + 1]).read_text()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], chat_template=template, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n<think>\n")
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], chat_template=template, tokenize=False, add_generation_prompt=False)
    assert "<think>" not in text
    assert forced_think_template(template) == template  # already forced: unchanged
