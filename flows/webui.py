"""`finr1 webui` (`make webui`): Open WebUI on this machine, chatting with a model that `finr1 serve` serves.

Two processes, each in its own session, each health-checked (``GET /health``) and stopped by
its process group on Ctrl-C, SIGTERM or exit (:class:`finr1_core.serving.ManagedServer` does the
starting, waiting and stopping):

- ``finr1 serve MODEL --host 127.0.0.1 --port P`` with a random API key (in the environment,
  never argv); its output goes to ``<data_dir>/finr1-serve.log``, its model server's log (one line
  per request) to ``<data_dir>/model-server.log``.
- ``open-webui serve --host 127.0.0.1 --port 8080`` from its own venv (``.venv-webui``: Open WebUI
  pins its own torch, transformers and fastapi), configured only through environment variables
  (:func:`open_webui_env`): single user, no Ollama, offline, the one model, a reply length cap.
  Its data (SQLite, secret key, uploads) and log live in ``<data_dir>`` (``$FINR1_HOME/webui``).
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path

from finr1_core.config import REPO_ROOT, embedded_model_dir, finr1_home, repo_env
from finr1_core.serving import ManagedServer, ServerError, check_model_dir, free_port

DEFAULT_OPEN_WEBUI = REPO_ROOT / ".venv-webui" / "bin" / "open-webui"
STARTUP_TIMEOUT_S = float(os.environ.get("FINR1_WEBUI_STARTUP_TIMEOUT_S", "300"))
PROMPT_SUGGESTIONS = [
    {"title": ["Present value", "of $110 in one year at 10%"],
     "content": "What is the present value of $110 received in one year at a 10% discount rate?"},
    {"title": ["EBITDA", "what it measures and what it leaves out"], "content": "What is EBITDA, and what does it leave out?"},
]


class WebUIError(RuntimeError):
    """One line: what failed and where its log is."""


class _Process(ManagedServer):
    """Any command with an HTTP ``/health`` on 127.0.0.1:port, managed like the model server."""

    def __init__(self, label: str, cmd: list[str], env: dict, port: int, log_path: str, stop_timeout_s: float = 10.0):
        super().__init__(None, "127.0.0.1", port, continuous_batching=False, startup_timeout_s=STARTUP_TIMEOUT_S, log_path=log_path)
        self.label, self._cmd, self._env, self.stop_timeout_s = label, cmd, env, stop_timeout_s

    def command(self) -> list[str]:
        return self._cmd

    def env(self) -> dict:
        return self._env


def secret_key(data_dir: Path) -> str:
    """Open WebUI's session-signing key, made once and kept in ``<data_dir>/.webui_secret_key`` (0600)."""
    path = data_dir / ".webui_secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def open_webui_env(base_url: str, api_key: str, model_id: str, data_dir: Path, port: int, max_tokens: int) -> dict:
    """Open WebUI's settings. ``ENABLE_PERSISTENT_CONFIG=False``: these win over its database at
    every start (the serve port and key change between starts)."""
    origins = f"http://127.0.0.1:{port};http://localhost:{port}"
    return dict(
        os.environ,
        DATA_DIR=str(data_dir),
        WEBUI_SECRET_KEY=secret_key(data_dir),
        WEBUI_AUTH="False",  # single user: the browser is signed in as the one admin
        ENABLE_PERSISTENT_CONFIG="False",
        ENABLE_OLLAMA_API="False",
        ENABLE_OPENAI_API="True",
        OPENAI_API_BASE_URL=base_url,
        OPENAI_API_KEY=api_key,
        # pin the one model (finr1 serve's /v1/models lists it too; transformers serve alone answered 500 there)
        OPENAI_API_CONFIGS=json.dumps({"0": {"enable": True, "model_ids": [model_id]}}),
        DEFAULT_MODELS=model_id,
        DEFAULT_MODEL_PARAMS=json.dumps({"max_tokens": max_tokens}),
        DEFAULT_PROMPT_SUGGESTIONS=json.dumps(PROMPT_SUGGESTIONS),
        # nothing from the network at start or later: no version check, no hub downloads, no
        # sentence-transformers embedding model (none is on disk; documents/RAG stay off)
        OFFLINE_MODE="True",
        HF_HUB_OFFLINE="1",
        ENABLE_VERSION_UPDATE_CHECK="False",
        RAG_EMBEDDING_MODEL="",
        RAG_EMBEDDING_MODEL_AUTO_UPDATE="False",
        RAG_RERANKING_MODEL_AUTO_UPDATE="False",
        WHISPER_MODEL_AUTO_UPDATE="False",
        ENABLE_WEB_SEARCH="False",
        ANONYMIZED_TELEMETRY="False",
        DO_NOT_TRACK="true",
        SCARF_NO_ANALYTICS="true",
        # each of these is one more request to the one CPU model after every reply
        ENABLE_TITLE_GENERATION="False",
        ENABLE_TAGS_GENERATION="False",
        ENABLE_FOLLOW_UP_GENERATION="False",
        ENABLE_AUTOCOMPLETE_GENERATION="False",
        CORS_ALLOW_ORIGIN=origins,
    )


def _check_port_free(port: int, what: str) -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise WebUIError(f"{what}: port {port} on 127.0.0.1 is in use") from None


def name_model(url: str, model_id: str, name: str, description: str) -> bool:
    """Show the model under ``name`` instead of its path (an Open WebUI model entry with the same id
    overrides the served model's name). False if it could not be set; the UI then shows the id."""
    import httpx

    try:
        token = httpx.post(f"{url}/api/v1/auths/signin", json={"email": "", "password": ""}, timeout=30).json()["token"]
        h = {"Authorization": f"Bearer {token}"}
        if httpx.get(f"{url}/api/v1/models/model", params={"id": model_id}, headers=h, timeout=30).status_code == 200:
            return True
        body = {"id": model_id, "name": name, "meta": {"description": description}, "params": {}}
        return httpx.post(f"{url}/api/v1/models/create", json=body, headers=h, timeout=30).status_code == 200
    except (httpx.HTTPError, KeyError, ValueError):
        return False


class WebUIStack:
    """``with WebUIStack(...) as st: st.url`` -> ``http://127.0.0.1:8080``; both processes stop on exit."""

    def __init__(self, model: str | None = None, *, port: int = 8080, serve_port: int = 0, api_key: str | None = None,
                 max_tokens: int = 512, data_dir: str | None = None, open_webui: str | None = None):
        try:
            self.model = check_model_dir(model or str(embedded_model_dir()))
        except ServerError as e:
            hint = " (run `finr1 prepare-model`)" if model is None else ""
            raise WebUIError(f"{e}{hint}") from None
        exe = Path(open_webui) if open_webui else DEFAULT_OPEN_WEBUI
        if not exe.exists():
            raise WebUIError(f"open-webui: {exe} not found (`make webui-setup` installs Open WebUI into .venv-webui)")
        if max_tokens < 1:
            raise WebUIError(f"max_tokens: must be at least 1 (got {max_tokens})")
        self.exe = str(exe)
        self.port = port
        self.serve_port = serve_port or free_port()
        self.api_key = api_key or secrets.token_urlsafe(24)
        self.max_tokens = max_tokens
        self.data_dir = Path(data_dir).expanduser().resolve() if data_dir else finr1_home() / "webui"
        self.serve_log = str(self.data_dir / "finr1-serve.log")
        self.model_server_log = str(self.data_dir / "model-server.log")
        self.webui_log = str(self.data_dir / "open-webui.log")
        self.serve: _Process | None = None
        self.webui: _Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}/v1"

    def start(self) -> "WebUIStack":
        _check_port_free(self.port, "--port (Open WebUI)")
        _check_port_free(self.serve_port, "--serve-port (finr1 serve)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        serve_env = repo_env(FINR1_SERVE_API_KEY=self.api_key, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        serve_cmd = [sys.executable, "-m", "flows.cli", "serve", self.model, "--host", "127.0.0.1", "--port", str(self.serve_port),
                     "--log", self.model_server_log]
        # `finr1 serve` stops its own model server on SIGTERM: give it time before SIGKILL
        self.serve = _Process("finr1 serve", serve_cmd, serve_env, self.serve_port, self.serve_log, stop_timeout_s=30)
        webui_env = open_webui_env(self.serve_url, self.api_key, self.model, self.data_dir, self.port, self.max_tokens)
        self.webui = _Process("open-webui", [self.exe, "serve", "--host", "127.0.0.1", "--port", str(self.port)], webui_env,
                              self.port, self.webui_log)
        try:
            self.serve.start()
            self.webui.start()
        except ServerError as e:
            self.stop()
            raise WebUIError(str(e)) from None
        name_model(self.url, self.model, f"finr1 · {Path(self.model).name}", f"served by finr1 serve from {self.model}")
        return self

    def wait(self) -> None:
        """Block while both run; :class:`WebUIError` when one of them exits."""
        while True:
            for p in (self.serve, self.webui):
                if p is not None and p.proc is not None and p.proc.poll() is not None:
                    raise WebUIError(f"{p.label} exited with code {p.proc.returncode}; log: {p.log_path}")
            time.sleep(0.5)

    def stop(self) -> None:
        for p in (self.webui, self.serve):
            if p is not None:
                p.stop()

    def __enter__(self) -> "WebUIStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_webui(model: str | None = None, *, log=print, **kw) -> None:
    """Start both, print the URL, run until Ctrl-C/SIGTERM (then stop both) or until one exits."""
    with WebUIStack(model, **kw) as st:
        log(f"Open WebUI: {st.url}  (model {st.model} via finr1 serve at {st.serve_url}, replies capped at {st.max_tokens} tokens)")
        log(f"logs: {st.webui_log}, {st.serve_log}, {st.model_server_log}; Ctrl-C stops both")
        try:
            st.wait()
        except KeyboardInterrupt:
            log("stopping Open WebUI and finr1 serve")
