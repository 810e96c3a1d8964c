"""`finr1 release push`: a missing token or no network gives one line, fast (never a hang)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finr1_core.release import release_dataset

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    row = {"key": "k0", "record_id": "r0", "repo_name": "finqa", "question": "q?", "language": "en",
           "text": "<think>\nx\n</think>\n\n\\boxed{1}", "verdict": "incorrect", "route": "rl", "route_reason": "answer_incorrect_rule"}
    release_dataset([row], str(root / "run1" / "release"))
    return root


def _push(storage: Path, *extra: str, env: dict, run: str = "run1", timeout: float = 90) -> tuple[subprocess.CompletedProcess, float]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "flows.cli", "release", "push", run, "--repo", "finr1/test-release",
                        "--storage", str(storage), *extra], cwd=REPO, env={**base, "PYTHONPATH": str(REPO), **env},
                       capture_output=True, text=True, timeout=timeout)
    return p, time.monotonic() - t


def _one_line_error(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, p.stdout + p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: release push"), p.stderr
    return lines[0]


def test_missing_token(storage):
    p, _ = _push(storage, env={})
    assert _one_line_error(p) == "error: release push: HF_TOKEN is not set (a Hugging Face write token is needed)"


def test_offline_mode_and_bad_repo_and_missing_release(storage):
    p, _ = _push(storage, env={"HF_TOKEN": "hf_x", "HF_HUB_OFFLINE": "1"})
    assert "HF_HUB_OFFLINE is set" in _one_line_error(p)
    p, _ = _push(storage, env={"HF_TOKEN": "hf_x"}, run="nope")
    assert _one_line_error(p).endswith("no complete release at " + str(storage / "nope" / "release"))


def test_no_network_fails_fast_with_one_line(storage):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p, dt = _push(storage, "--private", "--timeout", "3", env={"HF_TOKEN": "hf_x", "HF_ENDPOINT": f"http://127.0.0.1:{port}"})
    line = _one_line_error(p)
    assert f"release push to http://127.0.0.1:{port}/datasets/finr1/test-release failed: ConnectError" in line, line
    assert dt < 60
    # the real hub, with no network on this machine: still one line, bounded by --timeout
    p, dt = _push(storage, "--timeout", "3", env={"HF_TOKEN": "hf_x"})
    assert "release push to https://huggingface.co/datasets/finr1/test-release failed:" in _one_line_error(p)
    assert dt < 60
