"""Managed OpenAI-compatible model servers: vLLM (:class:`VLLMServer`) and ``transformers serve``
(:class:`ManagedServer`), each a subprocess.

A server is started on 127.0.0.1 on a free port, health-checked, and stopped by its PID (the whole
process group) when the ``with`` block ends, also on an exception or Ctrl-C. vLLM serves one model
per server (the embedded profile's default, from its own environment ``.venv-vllm``); where vLLM is
not installed or does not start, :func:`start_server` says so in one line and falls back to
``transformers serve``, which without a forced model loads any local model directory on demand
(the request's ``model`` must equal that path).

Production points the config at remote vLLM endpoints instead (``serve.kind: external``).
"""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

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
    """The log's last error line (a traceback ends with one; vLLM's engine prints more lines after
    it), else its last line."""
    import re

    try:
        lines = [l.strip() for l in Path(path).read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return "no log"
    errors = [l for l in lines if re.search(r"\b\w*(Error|Exception)\b: ", l)]
    return (errors or lines or ["empty log"])[-1][:200]


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


def vllm_python(configured: str | None = None) -> str:
    """The Python that runs vLLM: ``configured`` (``serve.vllm_python``), else ``$FINR1_VLLM_PYTHON``,
    else ``<repo>/.venv-vllm/bin/python`` (``make vllm``), else this Python when it has vLLM itself
    (a GPU machine with the ``gpu`` extra)."""
    from finr1_core.config import REPO_ROOT

    p = configured or os.environ.get("FINR1_VLLM_PYTHON")
    if p:
        return str(Path(p).expanduser())
    venv = REPO_ROOT / ".venv-vllm" / "bin" / "python"
    if venv.exists():
        return str(venv)
    import importlib.util

    return sys.executable if importlib.util.find_spec("vllm") is not None else str(venv)


_VLLM_CHECKS: dict[str, str | None] = {}


def vllm_problem(python: str | None = None) -> str | None:
    """Why vLLM cannot be used here (one line), or None. Cheap (no vLLM import), cached per Python."""
    python = python or vllm_python()
    if python in _VLLM_CHECKS:
        return _VLLM_CHECKS[python]
    why = None
    if not Path(python).exists():
        why = f"{python} does not exist (run `make vllm`, or set FINR1_VLLM_PYTHON / serve.vllm_python)"
    else:
        code = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vllm') else 3)"
        try:
            rc = subprocess.run([python, "-c", code], capture_output=True, timeout=60).returncode
        except (OSError, subprocess.TimeoutExpired) as e:
            rc, why = None, f"{python} does not run: {e}"
        if rc == 3:
            why = f"vllm is not installed in {python} (run `make vllm`)"
        elif rc not in (0, None):
            why = f"{python} exits with code {rc}"
    _VLLM_CHECKS[python] = why
    return why


def has_think_tokens(model_dir: str) -> bool:
    """Whether ``<think>`` and ``</think>`` are single tokens of the model's tokenizer (DeepSeek-R1,
    Qwen3): vLLM's ``deepseek_r1`` parser needs them."""
    import json

    f = Path(model_dir) / "tokenizer.json"
    if not f.exists():
        return True  # a hub id or a directory without tokenizer.json: assume a reasoning model
    tj = json.loads(f.read_text(encoding="utf-8"))
    have = set((tj.get("model") or {}).get("vocab") or {}) | {t.get("content") for t in tj.get("added_tokens", [])}
    return {"<think>", "</think>"} <= have


THINK_PARSER_PLUGIN = "infra/vllm/think_parser.py"  # registers `finr1_think` inside vLLM


def gpu_host() -> bool:
    """Whether this host has an NVIDIA GPU (its driver's control device), without importing torch."""
    return Path("/dev/nvidiactl").exists()


class VLLMServer(ManagedServer):
    """vLLM's OpenAI server as a managed subprocess (``python -m vllm.entrypoints.openai.api_server``
    of :func:`vllm_python`; the ``vllm`` console script of the CPU build reads the version of a
    distribution named ``vllm`` and fails). The reasoning parser returns the think block as the
    ``reasoning`` field and the chat template forces ``<think>\\n``. ``reasoning_parser="auto"``:
    ``deepseek_r1`` for a tokenizer with think tokens, else ``finr1_think`` (the same rule on text,
    :data:`THINK_PARSER_PLUGIN`). The API key goes through ``VLLM_API_KEY`` (the environment, never
    argv). On a CPU-only build ``kv_cache_gib`` caps the KV cache (``VLLM_CPU_KVCACHE_SPACE``) and
    OpenMP threads are not pinned (a shared machine). ``log_prompts``: vLLM logs every request's
    rendered prompt and sampling parameters (its request logger at DEBUG, nothing else)."""

    label = "vLLM server"

    def __init__(self, model: str, host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = None,
                 reasoning_parser: str = "auto", chat_template: str | None = None,
                 served_model_name: str | None = None, extra_args: list[str] | None = None,
                 startup_timeout_s: float = 900.0, log_path: str | None = None, python: str | None = None,
                 kv_cache_gib: int = 2, max_model_len: int | None = None, log_prompts: bool = False,
                 enforce_eager: bool | None = None):
        super().__init__(model, host, port, continuous_batching=False, startup_timeout_s=startup_timeout_s, log_path=log_path)
        self.api_key = api_key
        self.reasoning_parser = reasoning_parser
        self.chat_template = chat_template
        self.served_model_name = served_model_name
        self.extra_args = list(extra_args or [])
        self.python = vllm_python(python)
        self.kv_cache_gib = kv_cache_gib
        self.max_model_len = max_model_len
        self.log_prompts = log_prompts
        # None: eager on a host without a GPU. On the CPU build the compile warm-up dominates start-up
        # (SmolLM2-135M on the loaded 2-core machine: 342 s compiled, 74 s eager, the same tok/s).
        self.enforce_eager = (not gpu_host()) if enforce_eager is None else enforce_eager
        self.startup_s: float | None = None

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

    def parser_args(self) -> list[str]:
        from finr1_core.config import REPO_ROOT

        p = self.reasoning_parser
        if not p:
            return []
        if p == "auto":
            p = "deepseek_r1" if not Path(self.model).is_dir() or has_think_tokens(self.model) else "finr1_think"
        if p == "finr1_think":
            return ["--reasoning-parser-plugin", str(REPO_ROOT / THINK_PARSER_PLUGIN), "--reasoning-parser", p]
        return ["--reasoning-parser", p]

    def command(self) -> list[str]:
        cmd = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model, "--host", self.host, "--port", str(self.port)]
        if self.served_model_name:
            cmd += ["--served-model-name", self.served_model_name]
        cmd += self.parser_args()
        tf = self.template_file()
        if tf:
            cmd += ["--chat-template", tf]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.log_prompts:
            cmd.append("--enable-log-requests")
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        return cmd + self.extra_args

    def env(self) -> dict:
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        env.pop("VLLM_API_KEY", None)
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        # CPU build only (ignored by the CUDA build): a fixed KV cache (GiB; vLLM's default takes a
        # large share of the memory) and no OpenMP pinning (other processes share these cores)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        if Path(self.model).is_dir():  # a local model needs no hub (and a machine without network must not wait for one)
            env.setdefault("HF_HUB_OFFLINE", "1")
        if self.log_prompts:
            env["VLLM_LOGGING_CONFIG_PATH"] = _prompt_logging_config()
        return env

    def start(self) -> "VLLMServer":
        why = vllm_problem(self.python)
        if why:
            raise ServerError(f"vLLM unavailable: {why}")
        t0 = time.monotonic()
        super().start()
        self.startup_s = time.monotonic() - t0
        return self


def _prompt_logging_config() -> str:
    """vLLM's logging as by default, plus its request logger at DEBUG (the rendered prompt of each request)."""
    import json

    cfg = {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"vllm": {"format": "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s", "datefmt": "%m-%d %H:%M:%S"}},
        "handlers": {"vllm": {"class": "logging.StreamHandler", "formatter": "vllm", "level": "DEBUG", "stream": "ext://sys.stdout"}},
        "loggers": {"vllm": {"handlers": ["vllm"], "level": "INFO", "propagate": False},
                    "vllm.entrypoints.serve.utils.request_logger": {"handlers": ["vllm"], "level": "DEBUG", "propagate": False}},
    }
    path = Path(tempfile.gettempdir()) / "finr1-vllm-logging.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return str(path)


def serving_note(engine: str, why: str) -> str:
    """The one line said when the configured engine is not the one serving."""
    return f"vLLM unavailable ({why}); serving with transformers serve instead" if engine == "vllm" else why


# --------------------------------------------------------------------------- `finr1 serve`
def start_server(model: str | None, engine: str = "vllm", *, log=print, vllm: dict | None = None,
                 managed: dict | None = None) -> ManagedServer:
    """A started server of ``model``: vLLM (``vllm``: :class:`VLLMServer` keyword arguments) when
    ``engine`` is ``vllm`` and it starts, else ``transformers serve`` (``managed``: :class:`ManagedServer`
    keyword arguments). Falling back is never silent: ``log`` gets one line saying why."""
    if engine == "vllm":
        srv = VLLMServer(model, **(vllm or {}))
        try:
            return srv.start()
        except ServerError as e:
            log(serving_note("vllm", str(e).removeprefix("vLLM unavailable: ")))
    return ManagedServer(model, **(managed or {})).start()


def serve_forever(model: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                  engine: str = "transformers", log=print, log_path: str | None = None, log_requests: bool = False) -> None:
    """Serve one model until SIGINT/SIGTERM, then stop it (and its process group) cleanly.

    ``transformers``: ``transformers serve`` (CPU) on a private loopback port behind
    :mod:`finr1_core.keyproxy` (the key check, ``/v1/models``, the context-length check). ``vllm``:
    vLLM with the reasoning parser, the forced ``<think>\n`` template and its own key check; where
    vLLM is not installed or does not start, one line says so and ``transformers serve`` serves
    instead. ``log_path``: the model
    server's log (appended to; a temporary file by default), one line per request.
    """
    if engine not in ("transformers", "vllm"):
        raise ServerError(f"engine must be transformers or vllm (got {engine!r})")
    model = check_model_dir(model) if engine == "transformers" or Path(model).exists() else model
    srv: ManagedServer | None = None
    if engine == "vllm":
        try:
            srv = VLLMServer(model, host, port, api_key=api_key, log_path=log_path, log_prompts=log_requests).start()
        except ServerError as e:
            log(serving_note("vllm", str(e).removeprefix("vLLM unavailable: ")))
            engine, model = "transformers", check_model_dir(model)
    if srv is None:
        srv = ManagedServer(model, "127.0.0.1", free_port(), log_path=log_path).start()  # behind finr1_core.keyproxy, always
    try:
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
    finally:
        srv.stop()


# --------------------------------------------------------------------------- what the pipeline was served by
def vllm_kwargs(serve_cfg, **extra) -> dict:
    """:class:`VLLMServer` keyword arguments from a config's ``serve`` section."""
    s = serve_cfg
    return dict(python=s.vllm_python, reasoning_parser=s.reasoning_parser, kv_cache_gib=s.vllm_kv_cache_gib,
                max_model_len=s.vllm_max_model_len, startup_timeout_s=s.vllm_startup_timeout_s, enforce_eager=s.vllm_enforce_eager,
                **extra)


def served_url(base_url: str | dict | None, model: str) -> str | None:
    """The URL serving ``model``: ``base_url`` itself, or its entry in a served map
    (``{"engine": ..., "urls": {model: url}}``, what the pipeline's managed servers hand on)."""
    if isinstance(base_url, dict):
        return (base_url.get("urls") or {}).get(model)
    return base_url


def for_served(cfg, served: str | dict | None):
    """``cfg`` as the managed servers can serve it: ``transformers serve`` cannot continue an
    assistant turn, so where it serves (the fallback), ``chat-prefill`` roles without their own
    endpoint render the template locally (``completions``), with the same forced prefix."""
    if not isinstance(served, dict) or served.get("engine") != "transformers":
        return cfg
    upd = {}
    for role in ("teacher", "judge"):
        r = getattr(cfg, role)
        if r.mode == "chat-prefill" and all(not e.base_url for e in r.endpoints):
            upd[role] = r.model_copy(update={"mode": "completions"})
    return cfg.model_copy(update=upd) if upd else cfg


@contextlib.contextmanager
def serving(model: str | None, engine: str = "vllm", *, log=print, vllm: dict | None = None,
            managed: dict | None = None, record: list | None = None) -> Iterator[ManagedServer]:
    """:func:`start_server` as a ``with`` block: the server is stopped when it ends. ``record`` gets
    ``{"model", "engine", "startup_s"}`` of what actually served."""
    t0 = time.monotonic()
    srv = start_server(model, engine, log=log, vllm=vllm, managed=managed)
    if record is not None:
        record.append({"model": model, "engine": "vllm" if isinstance(srv, VLLMServer) else "transformers",
                       "startup_s": round(time.monotonic() - t0, 1)})
    try:
        yield srv
    finally:
        srv.stop()
