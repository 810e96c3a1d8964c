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
