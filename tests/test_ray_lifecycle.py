"""Ray's life cycle around distillation, with real Ray processes and the fake teacher server:

- a Ray head started with ``ray start --head`` is reached through ``ray://`` (Ray Client) and runs
  one distill shard, each key requested once; the head is then stopped by ending the processes
  it started (found by its temp dir and GCS address; never ``ray stop``, which would end every
  Ray process of the user);
- a process that started a local Ray leaves no Ray process behind when it exits or gets SIGTERM.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from finr1_core.distill import end_processes, session_processes
from tests.fake_openai import FakeOpenAIProcess
from tests.test_distill import free_port

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))

CHILD = """
import json, sys, time
from finr1_core.config import DistillConfig
from finr1_core.distill import distill_shard
from finr1_core.llm import Endpoint
from finr1_core.storage import Store
from tests.test_distill import make_prompts, fast_role
a = json.loads(sys.argv[1])
res = distill_shard(Store(a["root"], "run"), "part-00000", make_prompts(a["n"], tag=a["tag"]), fast_role(max_concurrency=8),
                    DistillConfig(num_workers=2, ray_address=a["ray"], ray_num_cpus=1), [Endpoint("fake", a["url"])], show_progress=False)
print("RESULT " + json.dumps({"rows": res.rows, "requested": res.requested}), flush=True)
time.sleep(a.get("linger", 0))
"""


def child_env(**extra: str) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", **extra)


def result_of(out: str) -> dict:
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert lines, out[-2000:]
    return json.loads(lines[-1][7:])


@pytest.fixture()
def ray_head():
    """A Ray head with a Ray Client server, started by ``ray start --head`` on free ports."""
    temp = tempfile.mkdtemp(prefix="finr1-head-", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, client = free_port(), free_port()
    cmd = [RAY, "start", "--head", "--port", str(gcs), "--ray-client-server-port", str(client), "--num-cpus", "2",
           "--include-dashboard=false", "--temp-dir", temp, "--disable-usage-stats"]
    markers = (temp, f":{gcs} ", f"--port={client} ")  # command-line args end with a space in session_processes
    try:
        # the per-client server starts a Python process that imports Ray: on a loaded machine it
        # needs more than the default 30 s before its channel is ready
        r = subprocess.run(cmd, env=child_env(RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S="180"), capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        yield f"ray://127.0.0.1:{client}", temp
    finally:
        procs = session_processes(*markers)
        end_processes(procs, grace_s=5)
        assert not [p for p, _ in session_processes(*markers)], "head processes left behind"
        shutil.rmtree(temp, ignore_errors=True)


def client_server_logs(temp: str) -> str:
    return "".join(f"\n--- {p.name}\n" + p.read_text(errors="replace")[-1500:] for p in Path(temp).glob("session_*/logs/ray_client_server*.err"))


def test_distill_shard_through_ray_client(ray_head, tmp_path):
    address, temp = ray_head
    with FakeOpenAIProcess(latency_ms=5) as srv:
        args = {"root": str(tmp_path), "n": 12, "tag": "rc", "ray": address, "url": srv.url}
        r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:] + client_server_logs(temp)
        got = srv.requests()
    res = result_of(r.stdout)
    from finr1_core.storage import Store

    rows = Store(str(tmp_path), "run").read_rows("distill")
    keys = [row["key"] for row in rows]
    assert res == {"rows": 24, "requested": 24} and len(set(keys)) == 24
    sent = Counter(e["key"] for e in got)
    assert set(sent) == set(keys) and max(sent.values()) == 1  # each key requested once
    assert all(row["text"].startswith("<think>\n") and "\\boxed{" in row["answer"] for row in rows)


def marked_processes(marker: str) -> list[str]:
    """Command lines of the processes whose environment carries ``marker`` (inherited from the child)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                out.append(f"{d}: " + f.read().replace(b"\0", b" ").decode(errors="replace")[:120])
        except OSError:
            continue
    return out


def wait_gone(marker: str, limit_s: float = 8.0) -> list[str]:
    t = time.monotonic()
    while time.monotonic() - t < limit_s:
        left = marked_processes(marker)
        if not left:
            return []
        time.sleep(0.25)
    return marked_processes(marker)


@pytest.mark.parametrize("ending", ["exit", "sigterm"])
def test_no_ray_process_outlives_the_driver(tmp_path, ending):
    marker = f"finr1-ray-exit-{uuid.uuid4().hex[:12]}"
    with FakeOpenAIProcess(latency_ms=5) as srv:
        args = {"root": str(tmp_path), "n": 6, "tag": ending, "ray": None, "url": srv.url, "linger": 600 if ending == "sigterm" else 0}
        child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], cwd=REPO, env=child_env(FINR1_TEST_MARKER=marker),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = ""
            while child.poll() is None and not line.startswith("RESULT "):
                line = child.stdout.readline()
            assert line.startswith("RESULT "), child.communicate(timeout=30)
            assert json.loads(line[7:])["rows"] == 12
            ray_procs = [c for c in marked_processes(marker) if f"{child.pid}:" not in c]
            assert any("raylet" in c or "gcs_server" in c for c in ray_procs), ray_procs  # Ray really ran
            if ending == "sigterm":
                child.send_signal(signal.SIGTERM)
            child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close(), child.stderr.close()
    left = wait_gone(marker)
    assert not left, f"Ray processes outlived the driver ({ending}): {left}"
    if ending == "sigterm":
        assert child.returncode in (-signal.SIGTERM, signal.SIGTERM)  # it still ends (Ray's own handler exits 15)
