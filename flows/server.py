"""A local Prefect server the standard way, plus the finr1 work pool, limit, worker and deployments.

- The server: ``prefect server start --background`` (Prefect writes ``server.pid`` in
  ``PREFECT_HOME``) and ``prefect server stop``. SQLite in ``PREFECT_HOME`` by default, PostgreSQL
  when ``PREFECT_API_DATABASE_CONNECTION_URL`` is set (``postgresql+asyncpg://...``).
- The ``finr1-process`` pool and the ``teacher`` tag concurrency limit: ``prefect work-pool create``
  and ``prefect concurrency-limit create``.
- A process worker: ``prefect worker start`` in its own session (Prefect has no background mode or
  stop command for workers), its PID and start time in ``<home>/worker.json``; ``server_down`` sends
  its process group SIGTERM (flow runs it started included), SIGKILL after a grace period.
- The deployments: ``prefect deploy --all --prefect-file deployments/prefect.yaml``.

``PREFECT_HOME`` is ``<home>`` (default ``$FINR1_HOME/prefect``); logs go to ``<home>/logs/``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

POOL = "finr1-process"
PREFECT_FILE = "deployments/prefect.yaml"
STARTUP_TIMEOUT_S = float(os.environ.get("FINR1_SERVER_STARTUP_TIMEOUT_S", "180"))


class ServerError(RuntimeError):
    """One line: what failed and where its log is."""


def state_dir(home: str | None = None) -> Path:
    from finr1_core.config import finr1_home

    return Path(home).expanduser().resolve() if home else finr1_home() / "prefect"


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=3) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - any failure means "not (yet) healthy"
        return False


def prefect_env(home: Path, api_url: str) -> dict:
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL=api_url, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"), RAY_USAGE_STATS_ENABLED="0")
    env.pop("PREFECT_PROFILE", None)
    return env


def _prefect(env: dict, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    from finr1_core.config import REPO_ROOT

    exe = str(Path(sys.executable).with_name("prefect"))
    p = subprocess.run([exe, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        tail = " ".join((p.stdout + p.stderr).split())[-600:]
        raise ServerError(f"prefect {' '.join(args)} failed ({p.returncode}): {tail}")
    return p


def start_server(home: Path, host: str, port: int, log=print, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> float:
    """``prefect server start --background``; waits for ``/api/health``. Returns seconds taken."""
    api = f"http://{host}:{port}/api"
    env = prefect_env(home, api)
    if (home / "server.pid").exists() and server_pid(home) is None:
        (home / "server.pid").unlink()  # stale (a crashed server): it would block --background
    elif server_pid(home) is not None:
        raise ServerError(f"a prefect server from {home} runs (pid {server_pid(home)}) but {api} is not healthy; run `finr1 server down --home {home}`")
    t0 = time.time()
    _prefect(env, "server", "start", "--background", "--host", host, "--port", str(port), timeout=120)
    while not healthy(api):
        if time.time() - t0 > startup_timeout_s:
            _prefect(env, "server", "stop", check=False, timeout=60)
            raise ServerError(f"prefect server on {host}:{port} not healthy after {startup_timeout_s:.0f} s (stopped it)")
        time.sleep(0.5)
    db = "postgres" if os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL", "").startswith("postgresql") else f"sqlite in {home}"
    log(f"server up at {api} ({time.time() - t0:.1f} s; database: {db})")
    return time.time() - t0


def server_pid(home: Path) -> int | None:
    """The PID in Prefect's ``server.pid`` when that process is a Prefect server, else None."""
    import psutil

    try:
        pid = int((home / "server.pid").read_text().strip())
        cmd = " ".join(psutil.Process(pid).cmdline())
    except (OSError, ValueError, psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return pid if "prefect.server.api.server:create_app" in cmd else None


def _worker_alive(info: dict) -> bool:
    """The recorded worker still runs (same PID *and* start time, so a recycled PID is not ours)."""
    import psutil

    try:
        return abs(psutil.Process(info["pid"]).create_time() - info["create_time"]) < 0.01
    except (psutil.NoSuchProcess, KeyError):
        return False


def start_worker(home: Path, api_url: str, log=print) -> dict:
    """``prefect worker start --pool finr1-process`` in its own session; PID in ``worker.json``."""
    import psutil

    from finr1_core.config import REPO_ROOT

    wfile = home / "worker.json"
    if wfile.exists() and _worker_alive(json.loads(wfile.read_text())):
        info = json.loads(wfile.read_text())
        log(f"worker already running (pid {info['pid']})")
        return info
    (home / "logs").mkdir(parents=True, exist_ok=True)
    exe = str(Path(sys.executable).with_name("prefect"))
    with open(home / "logs" / "worker.log", "ab") as out:
        w = subprocess.Popen([exe, "worker", "start", "--pool", POOL, "--type", "process"], env=prefect_env(home, api_url),
                             cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    info = {"pid": w.pid, "create_time": psutil.Process(w.pid).create_time(), "log": str(home / "logs" / "worker.log")}
    wfile.write_text(json.dumps(info, indent=2))
    log(f"worker started (pid {w.pid}, log {info['log']})")
    return info


def stop_worker(home: Path, log=print, timeout_s: float = 15.0) -> int | None:
    """SIGTERM to the worker's process group, SIGKILL what is left after ``timeout_s``."""
    wfile = home / "worker.json"
    if not wfile.exists():
        return None
    info = json.loads(wfile.read_text())
    pid = info["pid"]
    if not _worker_alive(info):
        wfile.unlink()
        return None
    t0 = time.time()
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        t1 = time.time()
        while time.time() - t1 < wait:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it when it is our child (server_up called in-process)
            except ChildProcessError:
                pass
            try:
                os.killpg(pid, 0)  # any process of the group left?
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            continue
        break
    wfile.unlink()
    log(f"stopped worker (pid {pid}, {time.time() - t0:.1f} s)")
    return pid


def server_up(host: str = "127.0.0.1", port: int = 4200, home: str | None = None, teacher_limit: int = 1,
              redistill_cron: str | None = None, deploy: bool = True, log=print,
              startup_timeout_s: float = STARTUP_TIMEOUT_S) -> dict:
    """Start (or reuse) the server, create the pool and the ``teacher`` limit, start (or reuse) the
    worker, deploy. Returns ``{"api_url", "ui_url", "prefect_home", "worker_pid", "deployed"}``."""
    sd = state_dir(home)
    (sd / "logs").mkdir(parents=True, exist_ok=True)
    api = f"http://{host}:{port}/api"
    env = prefect_env(sd, api)
    if healthy(api):
        log(f"server already running at {api}")
    else:
        start_server(sd, host, port, log=log, startup_timeout_s=startup_timeout_s)
    _prefect(env, "work-pool", "create", POOL, "--type", "process", "--overwrite")
    _prefect(env, "concurrency-limit", "create", "teacher", str(teacher_limit))
    log(f"work pool {POOL}; tag concurrency limit teacher={teacher_limit}")
    worker = start_worker(sd, api, log=log)
    if deploy:
        t0 = time.time()
        _prefect(env, "--no-prompt", "deploy", "--all", "--prefect-file", PREFECT_FILE)
        if redistill_cron:
            _prefect(env, "deployment", "schedule", "create", "finr1-redistill/re-distill", "--cron", redistill_cron,
                     "--timezone", "UTC", "--replace", "-y")
        log(f"deployed {PREFECT_FILE} ({time.time() - t0:.1f} s)" + (f"; re-distill cron {redistill_cron!r}" if redistill_cron else ""))
    return {"api_url": api, "ui_url": f"http://{host}:{port}", "prefect_home": str(sd), "worker_pid": worker["pid"],
            "deployed": bool(deploy)}


def _wait_gone(pid: int, timeout_s: float) -> None:
    """Wait for ``pid`` to exit after ``prefect server stop`` (SIGTERM); SIGKILL it after ``timeout_s``."""
    import psutil

    try:
        proc = psutil.Process(pid)
        proc.wait(timeout_s)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def server_down(home: str | None = None, log=print) -> dict:
    """Stop the worker (its process group), then ``prefect server stop``."""
    sd = state_dir(home)
    pid = stop_worker(sd, log=log)
    stopped = False
    spid = server_pid(sd)
    if (sd / "server.pid").exists():
        p = _prefect(prefect_env(sd, ""), "server", "stop", check=False, timeout=60)
        stopped = p.returncode == 0
        if spid is not None:
            _wait_gone(spid, 30.0)
        log(" ".join(p.stdout.split()) or f"prefect server stop exited {p.returncode}")
    elif pid is None:
        log(f"nothing to stop under {sd}")
    return {"worker_pid": pid, "server_stopped": stopped}
