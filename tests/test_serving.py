"""The managed `transformers serve` subprocess: healthy, serves the embedded model over the
OpenAI API with the forced prefix, and is stopped by PID, also when the block raises."""
from __future__ import annotations

import os

import httpx
import pytest

from finr1_core.config import embedded_model_dir
from finr1_core.llm import Endpoint, LLMClient, Sampling
from finr1_core.modelprep import is_ready, prepare_embedded_model
from finr1_core.serving import ManagedServer


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_prepare_model_is_idempotent():
    d = embedded_model_dir()
    assert is_ready(d)
    before = (d / "model.safetensors").stat().st_mtime_ns
    msgs = []
    prepare_embedded_model(log=msgs.append)
    assert "skipped" in msgs[0]
    assert (d / "model.safetensors").stat().st_mtime_ns == before
    import json

    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["do_sample"] is True
    assert "You are a helpful AI assistant named SmolLM" not in (d / "chat_template.jinja").read_text()


def test_managed_server_serves_and_stops_by_pid():
    model = str(embedded_model_dir())
    with pytest.raises(RuntimeError, match="boom"):
        with ManagedServer() as srv:
            pid = srv.pid
            assert httpx.get(srv.base_url.replace("/v1", "/health"), timeout=5).status_code == 200
            client = LLMClient([Endpoint("local", srv.base_url)], model, mode="completions", tokenizer_path=model)
            [c] = client.complete_many([([{"role": "user", "content": "What is 2+3?"}], Sampling(max_tokens=12, temperature=0.6), "<think>\n")])
            assert not isinstance(c, Exception), c
            assert c.prompt_sent.endswith("<|im_start|>assistant\n<think>\n")
            assert "<|im_start|>system" not in c.prompt_sent
            assert c.completion_tokens > 0 and c.text
            # the fixed KV cache keeps the server small (unbounded, it took 13.8 GB on CPU)
            rss_kb = int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")).split()[1])
            assert rss_kb < 4 * 1024 * 1024, f"model server uses {rss_kb / 1e6:.1f} GB"
            raise RuntimeError("boom")
    assert not _alive(pid) or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_server_is_stopped_when_its_owner_gets_sigterm(tmp_path):
    """A cancelled run (SIGTERM to the flow process) must not leave the model server behind."""
    import signal
    import subprocess
    import sys
    import time

    pidfile = tmp_path / "pid"
    code = (
        "import time, pathlib\n"
        "from finr1_core.serving import ManagedServer\n"
        "with ManagedServer() as srv:\n"
        f"    pathlib.Path({str(pidfile)!r}).write_text(str(srv.pid))\n"
        "    time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 120
    while not pidfile.exists() and time.time() < deadline:
        time.sleep(0.5)
    server_pid = int(pidfile.read_text())
    assert _alive(server_pid)
    owner.send_signal(signal.SIGTERM)
    assert owner.wait(timeout=30) != 0
    time.sleep(1)
    assert not _alive(server_pid)
