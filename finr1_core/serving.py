"""A managed OpenAI-compatible model server: ``transformers serve`` as a subprocess.

This is the embedded profile's stand-in for vLLM. It is started on 127.0.0.1 on a free port,
health-checked, and stopped by its PID (the whole process group) when the ``with`` block ends,
also on an exception or Ctrl-C. Without a forced model the server loads any local model directory
on demand, and the request's ``model`` must equal that path: one server thus serves the teacher,
the judge and every student checkpoint in the embedded profile.

Production points the config at real vLLM endpoints instead (``serve.kind: external``).
"""
from __future__ import annotations

import atexit
import os
import signal
import threading
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


class ServerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _serve_exe() -> str:
    exe = Path(sys.executable).with_name("transformers")
    return str(exe) if exe.exists() else "transformers"


class ManagedServer:
    """``with ManagedServer() as srv: srv.base_url`` -> ``http://127.0.0.1:PORT/v1``."""

    def __init__(
        self,
        model: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        continuous_batching: bool = True,
        startup_timeout_s: float = 180.0,
        cb_num_blocks: int | None = 2048,
        cb_block_size: int | None = 32,
        log_path: str | None = None,
    ):
        self.model = model
        self.host = host
        self.port = port or free_port(host)
        self.continuous_batching = continuous_batching
        self.cb_num_blocks = cb_num_blocks
        self.cb_block_size = cb_block_size
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path or tempfile.mktemp(prefix="finr1-serve-", suffix=".log")
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        cmd = [_serve_exe(), "serve"]
        if self.model:
            cmd.append(self.model)
        cmd += ["--host", self.host, "--port", str(self.port), "--device", "cpu"]
        if self.continuous_batching:
            cmd.append("--continuous-batching")
            # a fixed KV cache: by default it takes most of the free memory on CPU
            if self.cb_num_blocks:
                cmd += ["--cb-num-blocks", str(self.cb_num_blocks)]
            if self.cb_block_size:
                cmd += ["--cb-block-size", str(self.cb_block_size)]
        else:
            cmd.append("--no-continuous-batching")
        return cmd

    def start(self) -> "ManagedServer":
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self._log = open(self.log_path, "ab")
        # own process group, so stop() takes any children with it
        self.proc = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self._guard_signals()
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"http://{self.host}:{self.port}/health"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"model server exited with code {self.proc.returncode}; log: {self.log_path}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"model server not healthy after {self.startup_timeout_s:.0f} s; log: {self.log_path}")

    def _guard_signals(self) -> None:
        """Stop the server also when this process is ended: at exit, and on SIGTERM (a cancelled
        Prefect run, `kill`), which otherwise ends Python without running ``finally`` blocks."""
        atexit.register(self.stop)
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def on_term(signum, frame):
            self.stop()
            if callable(previous) and previous not in (signal.SIG_IGN, signal.SIG_DFL):
                previous(signum, frame)
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_term)
        self._previous_sigterm = previous

    def stop(self) -> None:
        if getattr(self, "_previous_sigterm", None) is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=5)
        finally:
            self._log.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> "ManagedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
