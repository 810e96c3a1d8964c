"""The local Ray session of this process: start-up behind a lock (a fresh temp dir, no dashboard),
clean shutdown at exit or on SIGTERM, and the scanning and ending of the processes a Ray session
started (GCS, raylet, agents, workers) so that none outlives the run.

:func:`ray_init` joins a cluster instead when given an address; then :func:`ray_shutdown` only
disconnects. Code that keeps Ray handles (the worker pool) registers :func:`on_shutdown` to drop them.
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from typing import Any, Callable

_RAY_LOCK = threading.Lock()
_SESSION: dict[str, Any] = {"temp_dir": None, "atexit": False, "sigterm": False}
_ON_SHUTDOWN: list[Callable[[], None]] = []


def on_shutdown(fn: Callable[[], None]) -> None:
    """Call ``fn`` in :func:`ray_shutdown`, after ``ray.shutdown()``: for state that holds Ray
    handles (actors) and must not outlive the session."""
    if fn not in _ON_SHUTDOWN:
        _ON_SHUTDOWN.append(fn)


def ray_init(address: str | None = None, num_cpus: int | None = None) -> None:
    """Initialise Ray once per process, behind a lock.

    ``address`` None starts a local Ray (no dashboard, a fresh temp dir, auth off unless the
    environment says otherwise), stopped with every helper process it started by
    :func:`ray_shutdown` at exit or on SIGTERM; ``'auto'`` or ``'ray://host:10001'`` joins a
    cluster. If Ray is already initialised in this process, this does nothing.
    """
    import ray

    with _RAY_LOCK:
        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if address not in (None, "", "local"):
            ray.init(address=address, logging_level=logging.WARNING)
            return
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # Ray's OOM killer picks its own newest workers: here, the small I/O-bound teacher
        # actors, while the memory is held by a model server outside Ray. Off for the local Ray.
        os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
        temp_dir = tempfile.mkdtemp(prefix="finr1-ray-")
        ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp_dir, logging_level=logging.WARNING)
        _SESSION["temp_dir"] = temp_dir
        install_exit_hooks()


def install_exit_hooks() -> None:
    """Call :func:`ray_shutdown` at exit and on SIGTERM (then the previous SIGTERM handler runs).
    :func:`ray_init` does this itself; the SIGTERM part needs the main thread, so a program that
    starts Ray from a worker thread calls this once from its main thread."""
    if not _SESSION["atexit"]:
        _SESSION["atexit"] = True
        atexit.register(ray_shutdown)
    if _SESSION["sigterm"] or threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread; atexit still covers exit
    _SESSION["sigterm"] = True
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        ray_shutdown()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


def ray_shutdown(grace_s: float = 3.0) -> list[int]:
    """``ray.shutdown()``, then end every process the local Ray session of this process started
    (GCS, raylet, agents, workers) that is still alive. Returns the PIDs that had to be ended.
    Safe to call more than once; for a cluster (``ray://``, ``auto``) it only disconnects."""
    import ray

    temp_dir = _SESSION["temp_dir"]
    procs = session_processes(temp_dir) if temp_dir else []
    try:
        if ray.is_initialized():
            ray.shutdown()
    finally:
        for fn in _ON_SHUTDOWN:
            fn()
        _SESSION["temp_dir"] = None
    ended = end_processes(procs, grace_s)
    remove_temp_dir(temp_dir)
    return ended


def remove_temp_dir(temp_dir: str | None = None) -> None:
    """Remove the local Ray session's folder (``finr1-ray-*`` in the temporary directory; default:
    this process's), unless ``FINR1_KEEP_TEMP=1`` (``--keep-temp``) keeps it for debugging."""
    temp_dir = temp_dir or _SESSION["temp_dir"]
    if temp_dir and os.environ.get("FINR1_KEEP_TEMP") != "1" and os.path.basename(temp_dir).startswith("finr1-ray-"):
        shutil.rmtree(temp_dir, ignore_errors=True)


def child_processes(pid: int | None = None) -> list[tuple[int, str]]:
    """(pid, start time) of every descendant of ``pid`` (default: this process), children first:
    the ephemeral Prefect server, Ray's GCS, raylet, agents and workers, model servers. Taken as a
    snapshot before ending any of them: an agent whose raylet died is re-parented and lost from view."""
    table = _proc_table()
    root = os.getpid() if pid is None else pid
    found: list[int] = []
    frontier = {root}
    while frontier:
        kids = sorted(p for p, (pp, _, _) in table.items() if pp in frontier and p not in found and p != root)
        found.extend(kids)
        frontier = set(kids)
    return [(p, table[p][1]) for p in found]


def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, start time, command line) for every process we can read."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        out[int(d)] = (int(fields[1]), fields[19], cmd)
    return out


def session_processes(*markers: str) -> list[tuple[int, str]]:
    """(pid, start time) of the processes of a Ray session: those whose command line contains one
    of ``markers`` (the session's temp dir names GCS, raylet and monitors; a head's GCS address
    names its Ray Client server) and all their descendants (agents and workers, renamed
    ``ray::...``). Never this process."""
    table = _proc_table()
    me = os.getpid()
    found = {p for p, (_, _, cmd) in table.items() if p != me and any(m and m in cmd for m in markers)}
    grew = True
    while grew:
        kids = {p for p, (pp, _, _) in table.items() if pp in found and p not in found and p != me}
        grew = bool(kids)
        found |= kids
    return [(p, table[p][1]) for p in sorted(found)]


def _alive(pid: int, start: str) -> bool:
    """The same process (not a reused PID) is still running (not a zombie)."""
    from finr1_core.lease import proc_start

    return proc_start(pid) == start


def end_processes(procs: list[tuple[int, str]], grace_s: float = 3.0) -> list[int]:
    """SIGTERM the processes still alive (same PID and start time), SIGKILL those left after
    ``grace_s``. Returns the PIDs that were alive."""
    left = [(p, s) for p, s in procs if _alive(p, s)]
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        for p, _ in left:
            try:
                os.kill(p, sig)
            except OSError:
                pass
        t = time.monotonic()
        while left and time.monotonic() - t < wait:
            time.sleep(0.05)
            left = [(p, s) for p, s in left if _alive(p, s)]
        if not left:
            break
    return [p for p, s in procs if (p, s) not in left]
