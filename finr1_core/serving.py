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
import socket
import subprocess
import sys
import tempfile
import threading
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

    label = "model server"  # how errors name this process
    stop_timeout_s = 10.0  # SIGTERM to the process group, SIGKILL after this

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

    def env(self) -> dict:
        return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

    def start(self) -> "ManagedServer":
        env = self.env()
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
                raise ServerError(f"{self.label} exited with code {self.proc.returncode}: {last_log_line(self.log_path)} (log: {self.log_path})")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"{self.label} not healthy after {self.startup_timeout_s:.0f} s; log: {self.log_path}")

    def _guard_signals(self) -> None:
        """Stop the server also when this process is ended: at exit, and on SIGTERM (a cancelled
        Prefect run, `kill`), which otherwise ends Python without running ``finally`` blocks."""
        atexit.register(self.stop)
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def on_term(signum, frame):
            if self.proc is None:  # a second SIGTERM while stopping: let the first finish the job
                return
            self.stop()
            if callable(previous) and previous not in (signal.SIG_IGN, signal.SIG_DFL):
                previous(signum, frame)
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_term)
        self._previous_sigterm = previous

    def stop(self) -> None:
        try:
            self._stop_process()
        finally:
            # restored only once the server is gone: a second SIGTERM during the stop (a wrapper
            # such as `timeout` forwarding it) must not end this process before its child
            if getattr(self, "_previous_sigterm", None) is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, self._previous_sigterm)
                self._previous_sigterm = None

    def _stop_process(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=self.stop_timeout_s)
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


def last_log_line(path: str) -> str:
    try:
        lines = [l.strip() for l in Path(path).read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return "no log"
    return lines[-1][:200] if lines else "empty log"


def check_model_dir(model: str) -> str:
    """A local model directory, resolved; one-line :class:`ServerError` if it is not one."""
    p = Path(model).expanduser()
    if not p.is_dir():
        raise ServerError(f"model: {model} is not a directory")
    if not (p / "config.json").exists():
        raise ServerError(f"model: {model} is not a model directory (no config.json)")
    return str(p.resolve())


# --------------------------------------------------------------------------- vLLM (production)
THINK_PREFIX = "<think>\n"
_FORCE_THINK = "{%- if add_generation_prompt %}{{- '<think>\\n' }}{%- endif %}"


def model_chat_template(model_dir: str) -> str | None:
    """The model's own chat template (``chat_template.jinja`` or ``tokenizer_config.json``)."""
    import json

    d = Path(model_dir)
    if (d / "chat_template.jinja").exists():
        return (d / "chat_template.jinja").read_text(encoding="utf-8")
    cfg = d / "tokenizer_config.json"
    if cfg.exists():
        t = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        return t if isinstance(t, str) else None
    return None


def forced_think_template(template: str) -> str:
    """The template with ``<think>\\n`` opened after the generation prompt (Fin-R1's forced prefix).

    A template that already opens the think block itself (DeepSeek-R1's) is returned unchanged."""
    if "<think>\\n' }}" in template.replace('"', "'").rstrip()[-200:] or template.rstrip().endswith("<think>\\n"):
        return template
    return template.rstrip("\n") + "\n" + _FORCE_THINK


class VLLMServer(ManagedServer):
    """``vllm serve`` as a managed subprocess (production, GPU): the reasoning parser returns the
    think block as ``reasoning_content`` and the chat template forces ``<think>\\n``. The API key
    goes through ``VLLM_API_KEY`` (the environment, never argv)."""

    def __init__(self, model: str, host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = None,
                 reasoning_parser: str = "deepseek_r1", chat_template: str | None = None,
                 served_model_name: str | None = None, extra_args: list[str] | None = None,
                 startup_timeout_s: float = 900.0, log_path: str | None = None):
        super().__init__(model, host, port, continuous_batching=False, startup_timeout_s=startup_timeout_s, log_path=log_path)
        self.api_key = api_key
        self.reasoning_parser = reasoning_parser
        self.chat_template = chat_template
        self.served_model_name = served_model_name
        self.extra_args = list(extra_args or [])

    def template_file(self) -> str | None:
        """The chat template handed to vLLM: the given file, or the model's own with the forced prefix."""
        if self.chat_template:
            return self.chat_template
        t = model_chat_template(self.model) if Path(self.model).is_dir() else None
        if t is None:
            return None
        path = Path(tempfile.mkdtemp(prefix="finr1-vllm-")) / "chat_template_think.jinja"
        path.write_text(forced_think_template(t), encoding="utf-8")
        return str(path)

    def command(self) -> list[str]:
        exe = Path(sys.executable).with_name("vllm")
        cmd = [str(exe) if exe.exists() else "vllm", "serve", self.model, "--host", self.host, "--port", str(self.port)]
        if self.served_model_name:
            cmd += ["--served-model-name", self.served_model_name]
        if self.reasoning_parser:
            cmd += ["--reasoning-parser", self.reasoning_parser]
        tf = self.template_file()
        if tf:
            cmd += ["--chat-template", tf]
        return cmd + self.extra_args

    def env(self) -> dict:
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        return env


# --------------------------------------------------------------------------- `finr1 serve`
def serve_forever(model: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                  engine: str = "transformers", log=print, log_path: str | None = None) -> None:
    """Serve one model until SIGINT/SIGTERM, then stop it (and its process group) cleanly.

    ``transformers``: ``transformers serve`` (CPU) on a private loopback port behind
    :mod:`finr1_core.keyproxy` (the key check, ``/v1/models``, the context-length check). ``vllm``: ``vllm serve`` with the reasoning
    parser, the forced ``<think>\\n`` template and its own key check. ``log_path``: the model
    server's log (appended to; a temporary file by default), one line per request.
    """
    if engine not in ("transformers", "vllm"):
        raise ServerError(f"engine must be transformers or vllm (got {engine!r})")
    model = check_model_dir(model) if engine == "transformers" or Path(model).exists() else model
    if engine == "vllm":
        srv: ManagedServer = VLLMServer(model, host, port, api_key=api_key, log_path=log_path)
    else:
        srv = ManagedServer(model, "127.0.0.1", free_port(), log_path=log_path)  # behind finr1_core.keyproxy, always
    with srv:
        url = f"http://{host}:{port}/v1"
        log(f"serving {model} at {url} (engine {engine}, {'API key required' if api_key else 'no API key'}); Ctrl-C stops it")
        if engine == "transformers":  # the key check, /v1/models and the context-length check
            from finr1_core.keyproxy import run_key_proxy

            run_key_proxy(f"http://127.0.0.1:{srv.port}", api_key, host, port, model_dir=model)
            return
        try:
            while srv.proc is not None and srv.proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            return
        if srv.proc is not None:
            raise ServerError(f"model server exited with code {srv.proc.returncode}: {last_log_line(srv.log_path)}")
