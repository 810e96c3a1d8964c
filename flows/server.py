"""`make server` / `finr1 server up|down`: a local Prefect server, work pool, worker and deployments."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

# --------------------------------------------------------------------------- local operations
# `make server` / `finr1 server up|down`: a real `prefect server start` (SQLite in PREFECT_HOME by
# default, Postgres when PREFECT_API_DATABASE_CONNECTION_URL is set), the `finr1-process` work
# pool, the `teacher` tag concurrency limit, a `prefect worker start` and the deployments of
# deployments/prefect.yaml. PIDs go to <state dir>/server.json; `down` stops them by PID.
POOL = "finr1-process"
PREFECT_FILE = "deployments/prefect.yaml"


def state_dir(home: str | None = None) -> Path:
    from finr1_core.config import finr1_home

    return Path(home).expanduser().resolve() if home else finr1_home() / "prefect"


def _alive(pid: int | None) -> bool:
    """True when ``pid`` runs and is one of ours (a prefect process), not a recycled PID."""
    if not pid:
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return "prefect" in cmd


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _healthy(api_url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(api_url + "/health", timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


def server_up(host: str = "127.0.0.1", port: int = 4200, home: str | None = None, teacher_limit: int = 1,
              redistill_cron: str | None = None, deploy: bool = True, log=print) -> dict:
    """Start (or reuse) the server and the worker, then create the pool, the limit and the
    deployments. Returns the state written to ``server.json``."""
    import subprocess
    import sys

    from finr1_core.config import REPO_ROOT

    sd = state_dir(home)
    (sd / "logs").mkdir(parents=True, exist_ok=True)
    state_file = sd / "server.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    api = f"http://{host}:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(sd), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"), RAY_USAGE_STATS_ENABLED="0")
    env.pop("PREFECT_PROFILE", None)
    exe = str(Path(sys.executable).with_name("prefect"))

    def prefect(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([exe, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        if check and p.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed ({p.returncode}): {(p.stdout + p.stderr)[-1500:]}")
        return p

    if _alive(state.get("server_pid")) and state.get("api_url") == api:
        log(f"server already running (pid {state['server_pid']}) at {api}")
    else:
        if not _port_free(host, port):
            raise RuntimeError(f"{host}:{port} is in use by another process; pick another --port")
        t0 = time.time()
        out = open(sd / "logs" / "server.log", "ab")
        p = subprocess.Popen([exe, "server", "start", "--host", host, "--port", str(port)], env=env, cwd=REPO_ROOT,
                             stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        state = {"server_pid": p.pid, "api_url": api, "ui_url": f"http://{host}:{port}", "prefect_home": str(sd)}
        state_file.write_text(json.dumps(state, indent=2))
        while not _healthy(api):
            if p.poll() is not None:
                raise RuntimeError(f"prefect server exited ({p.returncode}); see {sd / 'logs' / 'server.log'}")
            if time.time() - t0 > 120:
                raise RuntimeError(f"prefect server not healthy after 120 s; see {sd / 'logs' / 'server.log'}")
            time.sleep(0.3)
        log(f"server up at {api} (pid {p.pid}, {time.time() - t0:.1f} s; database: "
            f"{'postgres' if os.environ.get('PREFECT_API_DATABASE_CONNECTION_URL') else 'sqlite in ' + str(sd)})")
    # the pool and the limit at once (each CLI call pays Prefect's import time)
    calls = [["work-pool", "create", POOL, "--type", "process", "--overwrite"], ["concurrency-limit", "create", "teacher", str(teacher_limit)]]
    procs = [subprocess.Popen([exe, *a], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for a in calls]
    for a, p in zip(calls, procs):
        out_text = p.communicate(timeout=300)[0]
        if p.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(a)} failed ({p.returncode}): {out_text[-1500:]}")
    log(f"work pool {POOL}; tag concurrency limit teacher={teacher_limit}")
    if _alive(state.get("worker_pid")):
        log(f"worker already running (pid {state['worker_pid']})")
    else:
        out = open(sd / "logs" / "worker.log", "ab")
        w = subprocess.Popen([exe, "worker", "start", "--pool", POOL, "--type", "process"], env=env, cwd=REPO_ROOT,
                             stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        state["worker_pid"] = w.pid
        state_file.write_text(json.dumps(state, indent=2))
        log(f"worker started (pid {w.pid}, log {sd / 'logs' / 'worker.log'})")
    if deploy:
        t0 = time.time()
        prefect("--no-prompt", "deploy", "--all", "--prefect-file", PREFECT_FILE)
        if redistill_cron:
            prefect("deployment", "schedule", "create", "finr1-redistill/re-distill", "--cron", redistill_cron,
                    "--timezone", "UTC", "--replace", "-y")
        log(f"deployed {PREFECT_FILE} ({time.time() - t0:.1f} s)" + (f"; re-distill cron {redistill_cron!r}" if redistill_cron else ""))
    state["deployed"] = bool(deploy)
    state_file.write_text(json.dumps(state, indent=2))
    return state


def _group(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def server_down(home: str | None = None, log=print, timeout_s: float = 15.0) -> list[int]:
    """Stop the worker, then the server, by the PIDs in ``server.json``. Each was started as the
    leader of its own process group, so its children (flow runs and what they started, uvicorn)
    get the same signal: SIGTERM, then SIGKILL for what is still there after ``timeout_s``."""
    import signal

    sd = state_dir(home)
    state_file = sd / "server.json"
    if not state_file.exists():
        log(f"nothing to stop: no {state_file}")
        return []
    state = json.loads(state_file.read_text())
    stopped = []
    for name in ("worker_pid", "server_pid"):
        pid = state.get(name)
        if not pid or not (_alive(pid) or _group(pid)):
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        t0 = time.time()
        while _group(pid) and time.time() - t0 < timeout_s:
            time.sleep(0.1)
        if _group(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            t1 = time.time()
            while _group(pid) and time.time() - t1 < 5:
                time.sleep(0.1)
        stopped.append(pid)
        log(f"stopped {name[:-4]} (pid {pid}, {time.time() - t0:.1f} s)")
    state_file.unlink()
    return stopped
