"""`finr1 webui` and infra/webui/compose.yaml without starting anything: the compose file's settings
(pinned image = the pip pin of `make webui`, single user, Ollama off, offline, a data volume, the key
from the environment, loopback only) and one-line errors before any process starts. The running
stack is tested in tests/test_webui.py (heavy: a real browser)."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from shutil import which

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "infra" / "webui" / "compose.yaml"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "flows.cli", "webui", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_compose_pins_the_release_of_make_webui_and_runs_single_user_offline():
    svc = yaml.safe_load(COMPOSE.read_text())["services"]["open-webui"]
    pin = re.search(r"^OPEN_WEBUI_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    assert svc["image"] == f"ghcr.io/open-webui/open-webui:v{pin}"
    env = svc["environment"]
    assert env["WEBUI_AUTH"] == "False" and env["ENABLE_OLLAMA_API"] == "False"
    assert env["OFFLINE_MODE"] == "True" and env["HF_HUB_OFFLINE"] == "1" and env["ENABLE_VERSION_UPDATE_CHECK"] == "False"
    assert env["OPENAI_API_KEY"].startswith("${FINR1_STUDENT_API_KEY:?")  # required, from the environment
    assert env["OPENAI_API_BASE_URL"].startswith("${FINR1_WEBUI_OPENAI_BASE_URL:-")
    # the served model name of infra/vllm/student.yaml is the default model
    assert "--served-model-name=finr1-student" in (REPO / "infra" / "vllm" / "student.yaml").read_text()
    assert env["DEFAULT_MODELS"] == "${FINR1_WEBUI_MODEL:-finr1-student}"
    assert "open-webui-data:/app/backend/data" in " ".join(svc["volumes"])
    assert all(p.startswith("127.0.0.1:") for p in svc["ports"])


def test_compose_config_renders_when_docker_compose_is_present():
    r = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True) if which("docker") else None
    if r is None or r.returncode != 0:
        pytest.skip("no docker compose here (the YAML is checked above)")
    env = dict(os.environ, FINR1_STUDENT_API_KEY="k")
    out = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "OPENAI_API_KEY: k" in out.stdout


def test_webui_bad_model_path_is_one_line(tmp_path):
    r = _cli(str(tmp_path / "nope"), "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2 and r.stderr.strip() == f"error: model: {tmp_path / 'nope'} is not a directory"


def test_webui_without_open_webui_installed_is_one_line(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    r = _cli(str(model), "--open-webui", str(tmp_path / "bin" / "open-webui"), "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: open-webui: {tmp_path / 'bin' / 'open-webui'} not found (`make webui-setup` installs Open WebUI into .venv-webui)"


def test_webui_port_in_use_is_one_line_and_starts_nothing(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = _cli(str(model), "--port", str(port), "--open-webui", sys.executable, "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: --port (Open WebUI): port {port} on 127.0.0.1 is in use"
    assert not (tmp_path / "d").exists()
