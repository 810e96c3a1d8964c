"""Waiting for a server a test started as a subprocess."""
from __future__ import annotations

import subprocess
import time
from typing import Callable

import httpx


def wait_healthy(p: subprocess.Popen, port: int, timeout_s: float, what: str, output: Callable[[], str], every_s: float = 1.0) -> None:
    """Until ``GET /health`` on 127.0.0.1:``port`` answers 200; fails with ``what`` and the process's
    output when it exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert p.poll() is None, f"{what} exited {p.returncode}: {output()[-2000:]}"
        assert time.monotonic() < deadline, f"{what} not healthy after {timeout_s:.0f} s"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(every_s)
